"""Running one job on the worker: its context, the run, its heartbeat.

``execute`` is what ``JobtasticTask.run`` does: open a :class:`RunContext`,
show the job started, call ``calculate_result`` with the memory and result
checks, write the closing progress and keep the details. Every progress
write goes through ``writes.write_progress``, which is also where a running
job learns that it was cancelled or declared lost (see ``lifecycle.stop``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from time import monotonic
from typing import TYPE_CHECKING, Any

import psutil
from celery.exceptions import Ignore
from celery.worker import state as worker_state

from . import canvas_flow, guards, herd, keys, side_records, states
from .counts import ItemCounter
from .errors import JobStopped, ResultNotSerializable
from .heartbeat import alive_for, heartbeat
from .jsonsafe import HINT, NotJSONError, to_json
from .progress import ProgressMeter
from .steps import StepRecorder
from .writes import check_stop, write_progress

if TYPE_CHECKING:
    from .state import JobtasticState
    from .task import JobtasticTask

logger = logging.getLogger("flask_jobtastic")

_MB = 1_000_000  # SI megabytes, as memleak_threshold is documented

#: A message older than this when its run starts may have missed the cancel
#: broadcast (no worker was listening): the run asks the result backend first.
CHECK_CANCEL_AFTER = 1.0


@dataclass(eq=False)
class RunContext:
    """One run of one job, shared by the job's thread and its heartbeat thread.

    ``started``, ``finished`` and ``verdict`` change under ``lock``: the
    heartbeat writes nothing after the run ended or was told to stop.
    """

    task_id: str | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    #: The throttle of ``update_progress``; None when there is no job id to write to.
    meter: ProgressMeter | None = None
    #: PROGRESS 0, recorded when the job started.
    start_meta: dict[str, Any] = field(default_factory=dict)
    #: The job's result-cache key, and its herd key when it claimed one.
    cache_key: str | None = None
    herd_key: str | None = None
    herd_claimed: bool = True
    #: Whether the registry keeps a record of this job.
    tracked: bool = False
    #: A redelivered message (acks_late) may replace what a reader said of its lost first run.
    redelivered: bool = False
    #: Steps, messages and counts, made on first use.
    recorder: StepRecorder | None = None
    counter: ItemCounter | None = None
    details_used: bool = False
    #: The canvas this job is a part of, if any: it reports there too.
    canvas_id: str | None = None
    #: Whether PROGRESS (and the alive marker) has been written.
    started: bool = False
    #: Set as the run ends.
    finished: bool = False
    #: What the heartbeat's last renewal found (``guards.GO_ON``, ``CANCELLED``,
    #: ``FINAL``): the job stops at its next write.
    verdict: str = guards.GO_ON
    lock: threading.Lock = field(default_factory=threading.Lock)

    def details(self) -> dict[str, Any]:
        """Steps, messages and counts as the status document carries them."""
        assert self.recorder is not None and self.counter is not None
        details = dict(self.recorder.snapshot())
        if self.counter.used:
            details.update(self.counter.snapshot())
        return details


class RunSlot(threading.local):
    """Per-thread: one task instance serves every thread of a threads pool."""

    context: RunContext | None = None


# -- the run -----------------------------------------------------------------------


def execute(
    task: JobtasticTask, state: JobtasticState | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Progress set-up, memory check, result check around ``calculate_result``."""
    context = open_context(task, state, args, kwargs)
    task._run_slot.context = context
    if context.tracked and state is not None and context.task_id:
        state.record_state(context.task_id, "running", progress=0.0)
    failure: BaseException | None = None
    try:
        _begin(task, state, context)
        result = _compute(task, context)
        _close(task, context)
        return result
    except JobStopped as stopped:
        failure = stopped
        raise Ignore() from None  # its final state is written: Celery adds none
    except BaseException as exc:
        failure = exc
        raise
    finally:
        _end(task, context, failure)


def open_context(
    task: JobtasticTask, state: JobtasticState | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> RunContext:
    """What this run needs to know, read once from the message and the class."""
    task_id = task.request.id
    meter = ProgressMeter(
        started_at=monotonic(),
        interval=state.progress_interval if state else 0.5,
        smoothing=state.progress_smoothing if state else 0.3,
    )
    delivery = getattr(task.request, "delivery_info", None) or {}
    context = RunContext(
        task_id=task_id,
        args=tuple(args),
        kwargs=dict(kwargs),
        meter=meter if task_id else None,
        start_meta=meter.record(0, 1, monotonic()),
        herd_claimed=task._header("jobtastic_herd") is not False,
        tracked=bool(
            task_id
            and state is not None
            and state.registry is not None
            and (task.track_state or task._header("jobtastic_track"))
        ),
        redelivered=bool(delivery.get("redelivered")),
        details_used=bool(task.steps),
        canvas_id=task._header(canvas_flow.CANVAS_HEADER) if task_id else None,
    )
    if task.steps:
        ensure_details(task, context)
    sent_key = task._header("jobtastic_key")
    if sent_key:
        context.cache_key = sent_key
    elif task_id and (context.herd_claimed or task.cache_duration >= 0):
        try:
            context.cache_key = task.cache_key_for(context.args, context.kwargs)
        except TypeError:
            context.cache_key = None
    if context.cache_key:
        context.herd_key = keys.herd_key(context.cache_key)
    return context


def _begin(task: JobtasticTask, state: JobtasticState | None, context: RunContext) -> None:
    """Show the job started: at once, or through the heartbeat after a delay.

    Declared steps and tracked jobs show their state at once; any other job
    shows PROGRESS 0 once it has run ``started_delay`` seconds (or before
    its first progress write, whichever comes first).
    """
    task_id = context.task_id
    if not task_id:
        return
    if state is None:
        write_progress(task, context, context.start_meta)
        return
    if context.canvas_id:
        timeout = alive_for(task.herd_avoidance_timeout)
        if canvas_flow.report_started(state, context.canvas_id, task_id, timeout):
            check_stop(task, context)  # a queued part the cancel's broadcast has not reached
    at_once = state.started_delay <= 0 or context.details_used or context.tracked
    if not at_once and _sent_long_ago(task):
        # a cancel this worker's broadcast missed; a job shown at once learns
        # it from that first (guarded) write, without a round trip of its own
        check_stop(task, context)
    start_heartbeat(task, state, context, None if at_once else state.started_delay)
    if at_once:
        write_progress(task, context, context.start_meta)


def _compute(task: JobtasticTask, context: RunContext) -> Any:
    """``calculate_result`` with the memory check, its result made strict JSON."""
    watch_memory = task.memleak_threshold >= 0
    start = rss() if watch_memory else 0
    result = task.calculate_result(*context.args, **context.kwargs)
    if watch_memory:
        end = rss()
        growth = (end - start) / _MB
        if growth > task.memleak_threshold:
            task.warn_of_memory_leak(growth, start / _MB, end / _MB, context.args, context.kwargs)
    try:  # the rule of jsonsafe: convert (datetimes, UUIDs, ...) or refuse
        return to_json(result, "result")
    except NotJSONError as exc:
        raise ResultNotSerializable(
            f"{task.name}.calculate_result returned a value that cannot be stored "
            f"as JSON: {exc}; {HINT}"
        ) from None


def _close(task: JobtasticTask, context: RunContext) -> None:
    """The last PROGRESS reads 100; a run nobody saw write is checked for a stop.

    A job that never reported progress goes from its first PROGRESS straight
    to SUCCESS.
    """
    meter = context.meter
    if not context.task_id or meter is None:
        return
    if meter.touched or context.details_used:
        closing = meter.finished(monotonic())
        if closing is not None:
            write_progress(task, context, closing)  # also where a cancel is seen
            return
    if context.started:
        # ran long enough to be seen running: it could have been cancelled
        # or declared lost since its last write
        check_stop(task, context)


def _end(task: JobtasticTask, context: RunContext, failure: BaseException | None) -> None:
    with context.lock:  # no heartbeat write may land after this point
        context.finished = True
    if context.task_id:
        heartbeat.remove(context.task_id)
        if context.details_used:
            save_details(task, context, failure)
    context.meter = None


def _sent_long_ago(task: JobtasticTask) -> bool:
    sent_at = task._header("jobtastic_sent_at")
    return isinstance(sent_at, int | float) and time.time() - sent_at > CHECK_CANCEL_AFTER


# -- the heartbeat -----------------------------------------------------------------


def start_heartbeat(
    task: JobtasticTask, state: JobtasticState, context: RunContext, started_in: float | None
) -> None:
    """Keep the job's alive marker and herd key fresh while it runs.

    With ``started_in``, the first beat comes after that many seconds and
    writes PROGRESS 0 with the marker, unless the job wrote progress first;
    the herd key was placed with a full timeout at send time.
    """
    task_id = context.task_id
    assert task_id is not None
    timeout = alive_for(task.herd_avoidance_timeout)
    backend = task.backend
    cache = state.cache_backend
    request = task.request  # the job thread's: the heartbeat thread has none
    herd_key = context.herd_key if context.herd_claimed else None

    def renew() -> None:
        # Under the run's lock, so nothing lands after the run ended (or after
        # a later progress write), and no herd key is put back after the run
        # released it.
        with context.lock:
            if context.finished or context.verdict == guards.FINAL:
                return
            if not context.started:  # the first beat: PROGRESS 0 and the marker
                if task_id in worker_state.revoked:
                    return  # stopping: REVOKED must not be overwritten
                verdict = guards.guarded_progress(
                    backend,
                    task_id,
                    context.start_meta,
                    alive_for=timeout,
                    force=context.redelivered,
                )
                if verdict is None:
                    backend.store_result(
                        task_id, context.start_meta, states.PROGRESS, request=request
                    )
                context.started = True
            else:
                verdict = guards.check_run(backend, task_id, alive_for=timeout)
            if verdict is not None and verdict != guards.GO_ON:
                context.verdict = verdict  # the job stops at its next write, or as it ends
            if herd_key and context.verdict != guards.FINAL:
                herd.refresh_herd_key(cache, herd_key, task_id, timeout)
            if context.canvas_id:
                canvas_flow.renew(state, context.canvas_id, timeout)

    heartbeat.add(task_id, timeout, renew, first_in=started_in)


# -- steps, messages and counts ----------------------------------------------------


def ensure_details(task: JobtasticTask, context: RunContext) -> StepRecorder:
    """The run's step recorder and item counter, made on first use."""
    if context.recorder is None:
        context.recorder = StepRecorder(
            task.steps, max_messages=task.max_messages, on_failure=task._log_step_failure
        )
        context.counter = ItemCounter(max_items=task.max_messages)
    return context.recorder


def save_details(task: JobtasticTask, context: RunContext, failure: BaseException | None) -> None:
    """Keep steps, messages and counts readable after the job ended."""
    assert context.task_id is not None
    recorder = ensure_details(task, context)
    recorder.finish(failed_with=None if isinstance(failure, Ignore | JobStopped) else failure)
    try:
        timeout = alive_for(task.herd_avoidance_timeout)
        record = side_records.details_record(context.details(), timeout)
        side_records.write_side(task.backend, "run", context.task_id, record)
    except Exception:
        logger.warning("Could not save the details of job %s", context.task_id, exc_info=True)


_process: psutil.Process | None = None
_process_pid = 0


def rss() -> int:
    """Resident memory of this process in bytes (the Process handle per pid)."""
    global _process, _process_pid
    if _process is None or _process_pid != os.getpid():
        _process, _process_pid = psutil.Process(), os.getpid()
    return int(_process.memory_info().rss)
