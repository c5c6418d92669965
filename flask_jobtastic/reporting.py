"""What a job calls on ``self`` to say how it is doing.

``update_progress`` for a bar, steps for a checklist, ``notify`` for a log
line, counts for items done and failed. All of it is cheap to call often:
writes are throttled, and outside a run (a unit test calling
``calculate_result`` directly) nothing is written at all.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from time import monotonic
from typing import TYPE_CHECKING, Any, ClassVar, cast

from .counts import ItemCounter
from .errors import JobStopped
from .running import RunContext, RunSlot, ensure_details
from .status import error_id_for
from .steps import StepRecorder
from .writes import write_progress

if TYPE_CHECKING:
    from .task import JobtasticTask

logger = logging.getLogger("flask_jobtastic")


def _task(mixin: ReportingMixin) -> JobtasticTask:
    """The mixin is only ever part of ``JobtasticTask``: say so to the type checker."""
    return cast("JobtasticTask", mixin)


class ReportingMixin:
    """The reporting half of ``JobtasticTask``."""

    name: str
    steps: ClassVar[list[Any]]
    max_messages: ClassVar[int]

    @property
    def _run_slot(self) -> RunSlot:
        """This thread's run of this task instance."""
        try:
            slot: RunSlot = self.__dict__["_run_slot"]
        except KeyError:
            slot = self.__dict__.setdefault("_run_slot", RunSlot())
        return slot

    def update_progress(self, completed: float, total: float, update_frequency: int = 1) -> None:
        """Report that ``completed`` of ``total`` items are done.

        Cheap enough to call for every item: the result backend is written
        only when ``update_frequency`` items and ``JOBTASTIC_PROGRESS_INTERVAL``
        seconds have passed since the last write, and when ``total`` is reached.
        """
        context = self._run_slot.context
        meter = context.meter if context is not None else None
        if meter is None:
            return
        meter.touched = True
        meter.reported_completed = completed  # a detail flush writes what was reported
        meter.reported_total = total
        # the common case returns here, before any call: keep this test inline
        if completed < total and completed - meter.last_completed < update_frequency:
            return
        now = monotonic()
        if not meter.due(completed, total, update_frequency, now):
            return
        assert context is not None
        write_progress(_task(self), context, meter.record(completed, total, now))

    # -- steps and messages --------------------------------------------------------

    def _context(self) -> RunContext:
        """The current run's context; outside a run, one that writes nothing."""
        slot = self._run_slot
        if slot.context is None:
            slot.context = RunContext(task_id=None, args=(), kwargs={})
        return slot.context

    def _recorder(self) -> StepRecorder:
        return ensure_details(_task(self), self._context())

    def _counter(self) -> ItemCounter:
        context = self._context()
        ensure_details(_task(self), context)
        assert context.counter is not None
        return context.counter

    def _flush(self, *, urgent: bool) -> None:
        _flush_details(_task(self), self._context(), urgent=urgent)

    def _log_step_failure(self, step_key: str, exc: BaseException) -> None:
        """Log a failed step with the error id its generic message quotes."""
        context = self._run_slot.context
        task_id = context.task_id if context is not None else None
        if task_id:
            logger.warning(
                "Job %s (%s) step %r failed, error id %s: %s: %s",
                task_id,
                self.name,
                step_key,
                error_id_for(task_id),
                type(exc).__name__,
                exc,
                exc_info=(type(exc), exc, exc.__traceback__),
            )

    @contextlib.contextmanager
    def step(
        self, name: str, *, key: Any = None, continue_on_error: bool = False
    ) -> Iterator[None]:
        """``with self.step("Fly to the moon"):`` records a (nestable) step.

        On an exception the step is marked failed with the error; it then
        propagates, unless ``continue_on_error=True`` records it and goes on
        (see ``raise_latest_exception``).
        """
        block = self._recorder().step(name, key=key, continue_on_error=continue_on_error)
        block.__enter__()
        self._flush(urgent=True)
        try:
            yield
        except JobStopped:
            raise  # a cancel is not the step's error, and no step may swallow it
        except BaseException as exc:
            suppressed = block.__exit__(type(exc), exc, exc.__traceback__)
            self._flush(urgent=True)
            if not suppressed:
                raise
        else:
            block.__exit__(None, None, None)
            self._flush(urgent=True)

    def start_step(self, key: Any, name: str | None = None) -> None:
        """Start step ``key`` (ending the one running at the same level)."""
        self._recorder().start_step(key, name)
        self._flush(urgent=True)

    def update_step(self, detail: str, key: Any = None) -> None:
        """Say what the current (or ``key``) step is doing; throttled like progress."""
        self._recorder().update_step(detail, key)
        self._flush(urgent=False)

    def end_step(self, key: Any = None, error: BaseException | None = None) -> None:
        """End the current (or ``key``) step: done, or failed with ``error``."""
        self._recorder().end_step(key, error=error)
        self._flush(urgent=True)

    def notify(self, message: str) -> None:
        """Add a line to the job's message log (the newest ``max_messages`` are kept)."""
        self._recorder().notify(message)
        self._flush(urgent=False)

    def raise_latest_exception(self) -> None:
        """Re-raise the last error a ``continue_on_error`` step recorded, if any."""
        self._recorder().raise_latest_exception()

    # -- counts -------------------------------------------------------------------

    def set_amount(self, amount: int) -> None:
        """How many items this job will count; progress then follows the counts."""
        self._counter().set_amount(amount)
        self._flush(urgent=True)

    def add_one_success(self, item: Any = None) -> None:
        """Count one item done (``item`` is listed, bounded)."""
        self._counter().add_one_success(item)
        self._flush(urgent=False)

    def add_one_failure(self, item: Any = None) -> None:
        """Count one item failed (``item`` is listed, bounded)."""
        self._counter().add_one_failure(item)
        self._flush(urgent=False)

    def track(self, is_success: bool, item: Any = None) -> None:
        """Count one item as done or failed."""
        self._counter().track(is_success, item)
        self._flush(urgent=False)


def _flush_details(task: JobtasticTask, context: RunContext, *, urgent: bool) -> None:
    """Write after a step, message or count changed: at once or throttled."""
    context.details_used = True
    meter = context.meter
    if meter is None:
        return
    now = monotonic()
    if not urgent and now - meter.last_write_at < meter.interval:
        return
    assert context.counter is not None
    counted = context.counter.progress()
    completed: float
    total: float
    if counted is not None:
        completed, total = counted
    else:
        # what the job last reported, not what was last written: a flush
        # (which resets the throttle) must carry the progress it delays
        completed, total = meter.reported_completed, meter.reported_total or 1
    write_progress(task, context, meter.record(completed, total, now))
