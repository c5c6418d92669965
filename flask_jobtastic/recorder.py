"""Recording what a browser would see of an app's jobs, for tests.

:class:`JobRecorder` taps the result backend's writes (or, on Redis, what it
publishes, so writes of workers in other processes count too) and turns each
into the status document the status view would answer, in order.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from typing import Any

from celery.backends.base import BaseKeyValueStoreBackend
from celery.signals import before_task_publish, task_prerun
from flask import Flask

from . import results, states, status
from .state import JobtasticState

__all__ = ["JobRecorder", "state_of"]


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
