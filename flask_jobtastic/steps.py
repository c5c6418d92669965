"""Named steps and a message log for a job (pure, no I/O).

A job can tell its user *what* it is doing, not only how far it got:

* nested ``with recorder.step(...)`` blocks, each ending ``done`` or
  ``failed``, with the time spent on it and an optional detail line;
* a short "N of M steps finished" summary;
* a failing step can be recorded and skipped (``continue_on_error``), its
  exception kept so the job can still fail at the end
  (``raise_latest_exception``);
* a flat start / update / end style for code that is not shaped like blocks;
* steps declared up front, so the user sees the whole plan from the first poll;
* a bounded log of free-form notifications.

Kept free of Celery and Flask, with an injectable clock, so it can be tested
without a worker. A recorder belongs to one running job, which runs in one
thread: there are no locks.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal

from .errors import JobFailed

StepState = Literal["pending", "running", "done", "failed"]

PENDING: StepState = "pending"
RUNNING: StepState = "running"
DONE: StepState = "done"
FAILED: StepState = "failed"


def _describe(exc: BaseException) -> dict[str, Any]:
    """The stored ``error`` entry for ``exc``; a broken ``__str__`` must not hide it.

    The message is kept with whether it is meant for the user (``JobFailed``):
    the status document shows it only then, or with ``JOBTASTIC_EXPOSE_ERRORS``,
    a setting of the web side (see ``status.public_steps``).
    """
    try:
        message = str(exc)
    except Exception:
        message = f"<{type(exc).__name__} with an unprintable message>"
    return {
        "type": type(exc).__name__,
        "message": message,
        "user_facing": isinstance(exc, JobFailed),
    }


@dataclass
class _Step:
    """One step's record; ``run`` tells a re-run apart from the run a block opened."""

    key: str
    name: str
    declared: bool
    parent: str | None = None
    state: StepState = PENDING
    started_at: float | None = None
    ended_at: float | None = None
    detail: str | None = None
    error: dict[str, Any] | None = None
    run: int = 0
    children: list[str] = field(default_factory=list)


@dataclass
class _Open:
    """A running step on the stack; ``scoped`` when a ``with`` block owns it."""

    key: str
    run: int
    scoped: bool


class _StepBlock(AbstractContextManager[None]):
    """The context manager behind ``StepRecorder.step``."""

    def __init__(
        self, recorder: StepRecorder, name: str, key: Hashable | None, continue_on_error: bool
    ) -> None:
        self._recorder = recorder
        self._name = name
        self._key = key
        self._continue_on_error = continue_on_error
        self._opened: _Open | None = None

    def __enter__(self) -> None:
        self._opened = self._recorder._enter_block(self._name, self._key)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._opened is not None, "step block exited without being entered"
        self._recorder._leave_block(self._opened, exc)
        # Only ordinary errors may be swallowed; KeyboardInterrupt and
        # SystemExit always reach the caller.
        return self._continue_on_error and isinstance(exc, Exception)


class StepRecorder:
    """Records the steps of one job and renders them for the status document.

    ``declared`` lists the planned steps, as names or ``(key, name)`` pairs;
    they show as ``pending`` until started. Other steps are created the first
    time they start. A step's key defaults to its name, so give nested steps
    that share a name distinct keys.
    """

    def __init__(
        self,
        declared: Sequence[tuple[Hashable, str]] | Sequence[str] = (),
        *,
        max_messages: int = 50,
        clock: Callable[[], float] = time.time,
        on_failure: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        if isinstance(declared, str):
            raise TypeError("declared must be a sequence of step names, not one string")
        if isinstance(max_messages, bool) or not isinstance(max_messages, int):
            raise TypeError(f"max_messages must be an int, got {max_messages!r}")
        if max_messages < 0:
            raise ValueError(f"max_messages must be 0 or more, got {max_messages}")
        self._clock = clock
        self._on_failure = on_failure
        self._steps: dict[str, _Step] = {}
        self._roots: list[str] = []
        self._stack: list[_Open] = []
        self._messages: deque[dict[str, str]] = deque(maxlen=max_messages)
        self.latest_exception: BaseException | None = None
        self._urgent = False
        self._dirty = False
        for entry in declared:
            key, name = self._parse_declared(entry)
            if key in self._steps:
                raise ValueError(f"declared step key {key!r} appears more than once")
            self._steps[key] = _Step(key=key, name=name, declared=True)
            self._roots.append(key)

    @staticmethod
    def _parse_declared(entry: object) -> tuple[str, str]:
        if isinstance(entry, str):
            return entry, entry
        if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], str):
            return str(entry[0]), entry[1]
        raise TypeError(f"a declared step must be a name or a (key, name) pair, got {entry!r}")

    # -- flags ---------------------------------------------------------------

    @property
    def urgent(self) -> bool:
        """A step started or ended since the last snapshot: worth writing at once."""
        return self._urgent

    @property
    def dirty(self) -> bool:
        """Anything changed since the last snapshot: write when the throttle allows."""
        return self._dirty

    def _changed(self, *, urgent: bool) -> None:
        self._dirty = True
        if urgent:
            self._urgent = True

    # -- public API ------------------------------------------------------------

    def step(
        self, name: str, *, key: Hashable | None = None, continue_on_error: bool = False
    ) -> AbstractContextManager[None]:
        """A block that runs as one step: ``done`` when it ends, ``failed`` when it raises.

        With ``continue_on_error`` an ``Exception`` is recorded and swallowed so
        the code after the block still runs; ``raise_latest_exception`` can
        fail the job later.
        """
        if not isinstance(name, str):
            raise TypeError(f"step name must be a str, got {name!r}")
        return _StepBlock(self, name, key, continue_on_error)

    def start_step(self, key: Hashable, name: str | None = None) -> None:
        """Start ``key``, first ending (as done) the step running at the same level.

        The level is the innermost ``with`` step, or the top level.
        """
        skey = str(key)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"step name must be a str, got {name!r}")
        if skey not in self._steps and name is None:
            raise ValueError(f"step {skey!r} is not declared, so start_step needs a name for it")
        # Close whatever the previous start_step left running at this level.
        while self._stack and not self._stack[-1].scoped:
            self._close(self._stack.pop(), None)
        parent = self._stack[-1].key if self._stack else None
        opened = self._open(skey, name, parent, scoped=False)
        self._stack.append(opened)

    def update_step(self, detail: str, key: Hashable | None = None) -> None:
        """Set the detail line of ``key``, or of the innermost running step."""
        if not isinstance(detail, str):
            raise TypeError(f"step detail must be a str, got {detail!r}")
        if key is None:
            if not self._stack:
                raise ValueError("no step is running; pass the key of the step to update")
            target = self._steps[self._stack[-1].key]
        else:
            target = self._known(key)
        if target.detail != detail:
            target.detail = detail
            self._changed(urgent=False)

    def end_step(self, key: Hashable | None = None, *, error: BaseException | None = None) -> None:
        """End ``key`` (or the innermost running step): done, or failed with ``error``.

        Steps started inside it that are still running end the same way.
        """
        if key is None:
            if not self._stack:
                raise ValueError("no step is running; pass the key of the step to end")
            index = len(self._stack) - 1
        else:
            target = self._known(key)
            index = next((i for i, o in enumerate(self._stack) if o.key == target.key), -1)
            if index < 0:
                raise ValueError(f"step {target.key!r} is not running (it is {target.state})")
        while len(self._stack) > index:
            self._close(self._stack.pop(), error)

    def notify(self, message: str) -> None:
        """Add a line to the message log, dropping the oldest beyond ``max_messages``."""
        if not isinstance(message, str):
            raise TypeError(f"message must be a str, got {message!r}")
        stamp = datetime.fromtimestamp(self._clock(), tz=UTC).isoformat()
        self._messages.append({"time": stamp, "message": message})
        self._changed(urgent=False)

    def raise_latest_exception(self) -> None:
        """Re-raise the exception of the last failed step, so a tolerant job can still fail."""
        if self.latest_exception is not None:
            raise self.latest_exception

    def finish(self, failed_with: BaseException | None = None) -> None:
        """Close every running step when the job ends: done, or failed with ``failed_with``."""
        while self._stack:  # the job's own failure is reported by the job
            self._close(self._stack.pop(), failed_with, report=False)

    def snapshot(self) -> dict[str, Any]:
        """The JSON-safe ``steps``, ``steps_summary`` and ``messages``; clears the flags."""
        now = self._clock()
        steps = [self._render(step, depth, now) for step, depth in self._walk()]
        total = len(steps)
        finished = sum(1 for s in steps if s["state"] in (DONE, FAILED))
        failed = sum(1 for s in steps if s["state"] == FAILED)
        summary = f"{finished} of {total} {'step' if total == 1 else 'steps'} finished"
        if failed:
            summary += f", {failed} failed"
        self._urgent = False
        self._dirty = False
        return {
            "steps": steps,
            "steps_summary": summary,
            "messages": [dict(m) for m in self._messages],
        }

    # -- internals -------------------------------------------------------------

    def _known(self, key: Hashable) -> _Step:
        skey = str(key)
        try:
            return self._steps[skey]
        except KeyError:
            raise ValueError(f"there is no step with key {skey!r}") from None

    def _enter_block(self, name: str, key: Hashable | None) -> _Open:
        if key is not None:
            skey = str(key)
        else:
            # A bare name picks the declared step with that name, if any.
            skey = next(
                (s.key for s in self._steps.values() if s.declared and s.name == name), name
            )
        parent = self._stack[-1].key if self._stack else None
        opened = self._open(skey, name, parent, scoped=True)
        self._stack.append(opened)
        return opened

    def _leave_block(self, opened: _Open, exc: BaseException | None) -> None:
        position = next((i for i, o in enumerate(self._stack) if o is opened), -1)
        if position >= 0:
            # Steps started inside the block and left running share its outcome.
            while len(self._stack) > position:
                self._close(self._stack.pop(), exc)
            return
        step = self._steps[opened.key]
        if exc is not None and step.run == opened.run and step.state == DONE:
            # Ended early by end_step, but the block then raised: it did fail.
            self._fail(step, exc)

    def _open(self, key: str, name: str | None, parent: str | None, *, scoped: bool) -> _Open:
        step = self._steps.get(key)
        if step is None:
            assert name is not None
            step = _Step(key=key, name=name, declared=False, parent=parent)
            self._steps[key] = step
            if parent is None:
                self._roots.append(key)
            else:
                self._steps[parent].children.append(key)
        elif step.state == RUNNING:
            raise ValueError(f"step {key!r} is already running")
        else:
            if name is not None and not step.declared:  # a declared step keeps its name
                step.name = name
            if step.state != PENDING:
                step.detail = None
        step.state = RUNNING
        step.started_at = self._clock()
        step.ended_at = None
        step.error = None
        step.run += 1
        self._changed(urgent=True)
        return _Open(key=key, run=step.run, scoped=scoped)

    def _close(self, opened: _Open, error: BaseException | None, *, report: bool = True) -> None:
        step = self._steps[opened.key]
        if step.run != opened.run or step.state != RUNNING:
            return
        step.ended_at = self._clock()
        if error is None:
            step.state = DONE
            self._changed(urgent=True)
        else:
            self._fail(step, error, report=report)

    def _fail(self, step: _Step, error: BaseException, *, report: bool = True) -> None:
        step.state = FAILED
        step.error = _describe(error)
        if report and self._on_failure is not None and error is not self.latest_exception:
            # once per exception, however many nested steps it ends
            self._on_failure(step.key, error)
        self.latest_exception = error
        self._changed(urgent=True)

    def _walk(self) -> Iterator[tuple[_Step, int]]:
        """Steps in display order: roots, each followed by its subtree."""
        pending: list[tuple[str, int]] = [(key, 0) for key in reversed(self._roots)]
        while pending:
            key, depth = pending.pop()
            step = self._steps[key]
            yield step, depth
            pending.extend((child, depth + 1) for child in reversed(step.children))

    @staticmethod
    def _render(step: _Step, depth: int, now: float) -> dict[str, Any]:
        duration: float | None = None
        if step.started_at is not None:
            end = step.ended_at if step.ended_at is not None else now
            duration = round(max(end - step.started_at, 0.0), 3)
        return {
            "key": step.key,
            "name": step.name,
            "state": step.state,
            "depth": depth,
            "started_at": step.started_at,
            "ended_at": step.ended_at,
            "duration": duration,
            "detail": step.detail,
            "error": dict(step.error) if step.error is not None else None,
        }
