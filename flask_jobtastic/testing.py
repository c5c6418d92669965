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
import dataclasses
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

from celery import Celery
from celery.backends.base import BaseKeyValueStoreBackend
from celery.signals import before_task_publish, task_prerun
from flask import Flask

from . import reporting, results, running, states, status
from .state import JobtasticState

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


def state_of(app: Flask) -> JobtasticState:
    """The extension's state of ``app``, or an error saying how to get one."""
    state = app.extensions.get("jobtastic")
    if not isinstance(state, JobtasticState):
        raise RuntimeError(
            f"The Flask app {app.name!r} has no Jobtastic extension: call "
            "jobtastic.init_app(app) in the app your 'app' fixture returns"
        )
    return state


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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


class JobRecorder:
    """Every status document the jobs of ``app`` went through, write by write.

    Each write of a job's state (queued, every progress write with its steps,
    messages and counts, the result) becomes the document ``GET
    <prefix>/status/<id>`` would have answered right then, as the job's owner
    sees it. Works with any key-value result backend (memory, memcached,
    Redis), for jobs run synchronously or by a worker in this process; on
    Redis it listens to what the backend publishes, so it also hears
    workers in other processes.
    """

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.state = state_of(app)
        self._lock = threading.Lock()
        self._documents: dict[str, list[dict[str, Any]]] = {}
        self._errors: list[BaseException] = []
        self._tap: _SetTap | _PubSubTap | None = None

    def start(self) -> JobRecorder:
        if self._tap is None:
            backend = self.state.celery.backend
            if not isinstance(backend, BaseKeyValueStoreBackend):
                raise RuntimeError(
                    f"JobRecorder needs a key-value result backend (Redis, memcached, "
                    f"'cache+memory://'), not {type(backend).__name__}"
                )
            tap_class = _PubSubTap if results.is_redis_backend(backend) else _SetTap
            self._tap = tap_class(self, backend)
        return self

    def stop(self) -> None:
        if self._tap is not None:
            self._tap.close()
            self._tap = None

    def __enter__(self) -> JobRecorder:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def task_ids(self) -> list[str]:
        """The ids of the jobs seen, in the order they were first written."""
        self._sync()
        with self._lock:
            return list(self._documents)

    def documents(self, task_id: str) -> list[dict[str, Any]]:
        """The documents of one job so far, oldest first (copies)."""
        self._sync()
        with self._lock:
            return [dict(document) for document in self._documents.get(task_id, [])]

    def states(self, task_id: str) -> list[str]:
        """The ``state`` of each document, e.g. ``["PENDING", "PROGRESS", "SUCCESS"]``."""
        return [document["state"] for document in self.documents(task_id)]

    def wait(self, task_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The documents of a job run elsewhere (a worker), once one of them is final."""
        deadline = time.monotonic() + timeout
        while True:
            documents = self.documents(task_id)
            if documents and documents[-1].get("ready"):
                return documents
            if time.monotonic() > deadline:
                seen = [document["state"] for document in documents]
                raise AssertionError(
                    f"job {task_id} did not end within {timeout}s; states seen: {seen} "
                    "(is a worker running? see the jobtastic_worker fixture)"
                )
            time.sleep(0.02)

    def _sync(self) -> None:
        if self._tap is not None:
            self._tap.flush()
        if self._errors:
            raise RuntimeError("JobRecorder could not read a write") from self._errors[0]

    def record(self, backend: Any, task_id: str, raw: Any) -> None:
        """Add the document of a meta just written (``raw``: as stored)."""
        try:
            meta = results.decode_meta(backend, task_id, raw)
            view = dataclasses.replace(results.read_job(backend, task_id), meta=meta)
            document = status.document_for(task_id, view, expose_errors=self.state.expose_errors)
            owner = (view.job or {}).get("owner")
            document = status.for_viewer(document, view.job, owner)
        except Exception as exc:  # never break the job under test: report it later
            self._errors.append(exc)
            return
        with self._lock:
            self._documents.setdefault(task_id, []).append(document)

    def record_queued(self, backend: Any, task_id: str) -> None:
        """The queued state, which Redis does not publish: read as the job is sent or run."""
        with self._lock:
            if task_id in self._documents:
                return
        try:
            meta = results.read_job(backend, task_id).meta
        except Exception as exc:
            self._errors.append(exc)
            return
        if meta.get("status") == states.PENDING and "task_id" in meta:
            self.record(backend, task_id, backend.encode(meta))


def _task_prefix(backend: Any) -> str:
    """What a meta key is before its task id (``celery-task-meta-``, prefixes included)."""
    return _text(backend.get_key_for_task("x"))[:-1]


class _SetTap:
    """Hears ``set`` on the backend's class: each thread has its own backend instance."""

    def __init__(self, recorder: JobRecorder, backend: Any) -> None:
        self.cls = type(backend)
        self.own = "set" in self.cls.__dict__
        original = self.cls.set
        prefix = _task_prefix(backend)
        celery = recorder.state.celery

        def tapped(backend: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
            answer = original(backend, key, value, *args, **kwargs)
            name = _text(key)
            if backend.app is celery and name.startswith(prefix):
                recorder.record(backend, name[len(prefix) :], value)
            return answer

        self.original = original
        self.cls.set = tapped

    def flush(self) -> None:
        """Writes are heard as they happen."""

    def close(self) -> None:
        if self.own:
            self.cls.set = self.original
        else:
            del self.cls.set


class _PubSubTap:
    """Hears what Redis publishes for each write, as the event stream does.

    ``flush`` publishes a token on a channel of its own and waits for it:
    Redis delivers in order, so every write published before it was heard.
    """

    def __init__(self, recorder: JobRecorder, backend: Any) -> None:
        self.recorder = recorder
        self.backend = backend
        self.client = backend.client
        self.prefix = _task_prefix(backend)
        self.channel = f"jobtastic-recorder-{uuid.uuid4()}"
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe(f"{self.prefix}*")
        self.pubsub.subscribe(self.channel)
        self.tokens: dict[str, threading.Event] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.listen, name="jobtastic-recorder", daemon=True)
        self.thread.start()
        # the queued state: before a message is sent, or before a synchronous run
        before_task_publish.connect(self.on_publish, weak=False)
        task_prerun.connect(self.on_prerun, weak=False)
        self.flush()  # subscribed before anything is sent

    def listen(self) -> None:
        while not self.stopped.is_set():
            try:
                message = self.pubsub.get_message(timeout=0.05)
            except Exception as exc:
                self.recorder._errors.append(exc)
                return
            if message is None:
                continue
            channel = _text(message["channel"])
            if channel == self.channel:
                event = self.tokens.pop(_text(message["data"]), None)
                if event is not None:
                    event.set()
            elif channel.startswith(self.prefix):
                self.recorder.record(self.backend, channel[len(self.prefix) :], message["data"])

    def on_publish(self, sender: Any = None, headers: Any = None, **_: Any) -> None:
        task_id = (headers or {}).get("id")
        if task_id and sender in self.recorder.state.celery.tasks:
            self.recorder.record_queued(self.backend, task_id)

    def on_prerun(self, sender: Any = None, task_id: str | None = None, **_: Any) -> None:
        if task_id and getattr(sender, "app", None) is self.recorder.state.celery:
            self.recorder.record_queued(self.backend, task_id)

    def flush(self, timeout: float = 10.0) -> None:
        token = uuid.uuid4().hex
        event = self.tokens[token] = threading.Event()
        self.client.publish(self.channel, token)
        if not event.wait(timeout):
            raise RuntimeError(f"JobRecorder heard nothing from Redis within {timeout}s")

    def close(self) -> None:
        before_task_publish.disconnect(self.on_publish)
        task_prerun.disconnect(self.on_prerun)
        self.stopped.set()
        self.thread.join(5)
        self.pubsub.close()


# -- assertions ------------------------------------------------------------------------


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
