"""Helpers for testing an application's jobs; the pytest plugin's fixtures use them.

* :class:`JobRecorder`: every status document of every job an app runs, in
  the order the writes happened, built by the function the status view uses.
* :func:`assert_progress`: progress never goes backwards, ends at 100 on a
  success, names the steps it must have shown; failures say what was seen.
* :func:`broker_down`: the app's Celery really cannot reach its broker.
* :func:`controlled_clock`: the time the progress meter reads, moved by the test.
* :func:`in_process_worker`: a real Celery worker thread on the app's servers.
* :func:`synchronous`: jobs run where they are sent (on by default with
  ``app.testing``, see ``JOBTASTIC_RUN_SYNCHRONOUSLY``), or not.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

from celery import Celery
from flask import Flask

from . import reporting, running, states
from .recorder import JobRecorder, state_of

__all__ = [
    "JobClock",
    "JobRecorder",
    "assert_progress",
    "broker_down",
    "controlled_clock",
    "in_process_worker",
    "percents",
    "synchronous",
]

#: The states of a job that has not ended, whose progress must not go backwards.
_UNFINISHED = frozenset({states.PENDING, states.PROGRESS, "STARTED", "RETRY"})


# -- synchronous runs ----------------------------------------------------------------


@contextlib.contextmanager
def synchronous(app: Flask, enabled: bool = True) -> Iterator[Celery]:
    """Jobs of ``app`` run in the sending process at once (or, ``enabled=False``, not).

    Celery's ``task_always_eager``: the call goes through ``apply``, and
    ``JobtasticTask`` stores the eager run's progress and result, so the
    status endpoint reads what it would after a worker's run.
    """
    celery = state_of(app).celery
    saved = celery.conf.task_always_eager
    celery.conf.task_always_eager = enabled
    try:
        yield celery
    finally:
        celery.conf.task_always_eager = saved


# -- recording status documents -----------------------------------------------------


def percents(documents: Iterable[Mapping[str, Any]]) -> list[float]:
    """``progress_percent`` of each document that is not final, in order."""
    return [d["progress_percent"] for d in documents if d.get("state") in _UNFINISHED]


def _describe_end(document: Mapping[str, Any]) -> str:
    error = document.get("error")
    if isinstance(error, Mapping):
        return f"{document['state']} ({error.get('type')}: {error.get('message')})"
    return str(document["state"])


def _seen_steps(documents: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for document in documents:
        for step in document.get("steps") or ():
            seen.setdefault(str(step.get("name")), None)
    return list(seen)


def assert_progress(
    documents: Sequence[Mapping[str, Any]],
    *,
    steps: Iterable[str] = (),
    state: str = states.SUCCESS,
) -> None:
    """Progress never went backwards, the job ended in ``state`` and showed ``steps``.

    A job that ends in SUCCESS must have reached 100. Raises
    ``AssertionError`` with the percents and states that were seen.
    """
    __tracebackhide__ = True  # pytest shows the user's line, not this one
    if not documents:
        raise AssertionError("no status documents were recorded for this job")
    seen = percents(documents)
    for index in range(1, len(seen)):
        if seen[index] < seen[index - 1]:
            raise AssertionError(
                f"progress went backwards: {seen[index - 1]} then {seen[index]} "
                f"(progress seen: {seen})"
            )
    last = documents[-1]
    if last["state"] != state:
        raise AssertionError(
            f"progress never reached the end: it stopped at {max(seen, default=0)} and the "
            f"job ended in {_describe_end(last)}, not {state} (progress seen: {seen})"
        )
    running = [d["progress_percent"] for d in documents if d.get("state") == states.PROGRESS]
    if state == states.SUCCESS and running and running[-1] != 100:
        raise AssertionError(
            f"progress never reached 100: the last PROGRESS read {running[-1]} before "
            f"SUCCESS (progress seen: {seen})"
        )
    missing = [name for name in steps if name not in _seen_steps(documents)]
    if missing:
        raise AssertionError(f"steps never shown: {missing} (steps seen: {_seen_steps(documents)})")


# -- the broker down -----------------------------------------------------------------


def _dead_url(broker_url: str, port: int) -> str:
    scheme = broker_url.split("://", 1)[0].split("+")[0].lower()
    if scheme in ("amqp", "pyamqp", "amqps"):
        return f"amqp://guest:guest@127.0.0.1:{port}//"
    return f"redis://127.0.0.1:{port}/0"


def _forget_connections(celery: Celery) -> None:
    """Connections are pooled per broker URL: drop the app's pools (as after a fork)."""
    cast(Any, celery)._pool = None
    cast(Any, celery.amqp)._producer_pool = None


@contextlib.contextmanager
def broker_down(app: Flask) -> Iterator[str]:
    """The app's Celery publishes to a port where nothing listens; yields that URL.

    The refusal is real, so ``delay_or_fail`` answers with its FAILURE and
    ``delay_or_eager`` runs the job here, as with a dead broker. Jobs are
    really sent meanwhile (not run synchronously), so that the send fails.
    """
    celery = state_of(app).celery
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = _dead_url(str(celery.conf.broker_url or ""), closed.getsockname()[1])
        saved = celery.conf.get("broker_write_url")
        celery.conf["broker_write_url"] = url
        _forget_connections(celery)
        try:
            with synchronous(app, enabled=False):
                yield url
        finally:
            celery.conf["broker_write_url"] = saved
            _forget_connections(celery)


# -- the clock -------------------------------------------------------------------------


class JobClock:
    """The monotonic time jobs read for their progress throttle and time estimates.

    Starts at ``start``; ``advance(seconds)`` moves it, and each reading
    moves it by ``tick`` afterwards (0: only ``advance`` does).
    """

    def __init__(self, start: float = 1000.0, tick: float = 0.0) -> None:
        self.now = start
        self.tick = tick
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            value = self.now
            self.now += self.tick
            return value

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@contextlib.contextmanager
def controlled_clock(start: float = 1000.0, tick: float = 0.0) -> Iterator[JobClock]:
    """Jobs in this process read a :class:`JobClock` for progress; nothing else does."""
    clock = JobClock(start, tick)
    readers = (vars(reporting), vars(running))  # both import ``monotonic`` from time
    saved = [reader["monotonic"] for reader in readers]
    for reader in readers:
        reader["monotonic"] = clock
    try:
        yield clock
    finally:
        for reader, original in zip(readers, saved, strict=True):
            reader["monotonic"] = original


# -- a worker --------------------------------------------------------------------------


@contextlib.contextmanager
def in_process_worker(
    app: Flask, *, concurrency: int = 2, pool: str = "threads", shutdown_timeout: float = 10.0
) -> Iterator[Any]:
    """A Celery worker thread consuming the app's broker (Celery's ``start_worker``).

    Jobs are sent for real meanwhile, even under ``app.testing``. The broker
    and result backend are the app's: point its ``CELERY`` settings at the
    servers the test should use (an own queue, ``task_default_queue``, keeps
    other workers on the same broker out of it).
    """
    from celery.contrib.testing.worker import start_worker

    celery = state_of(app).celery
    with (
        synchronous(app, enabled=False),
        start_worker(
            celery,
            concurrency=concurrency,
            pool=pool,
            loglevel="WARNING",
            perform_ping_check=False,
            shutdown_timeout=shutdown_timeout,
        ) as worker,
    ):
        yield worker
