"""The event stream behind ``GET <prefix>/events/<task_id>`` (Server-Sent Events).

With Celery's Redis result backend it listens on the pub/sub channel Celery
already publishes every task-meta write on, so a progress write reaches the
page without polling. Other backends are polled server-side at a short
interval. Either way one open stream holds one server thread (or greenlet):
run the app under a server built for long connections.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterator
from typing import Any

from . import jsonsafe, results
from .reading import viewer_document

logger = logging.getLogger("flask_jobtastic")


def format_event(document: dict[str, Any], event: str = "status") -> str:
    """One SSE message: an event name and the strict JSON document on one data line.

    Documents come from ``status.build_status``, strict JSON by construction.
    """
    return f"event: {event}\ndata: {jsonsafe.dumps(document)}\n\n"


def _redis_client(backend: Any) -> Any | None:
    """The redis-py client of a Redis result backend, else None."""
    from celery.backends.redis import RedisBackend

    if isinstance(backend, RedisBackend):
        return backend.client
    return None


def event_stream(state: Any, task_id: str) -> Iterator[str]:
    """Yield SSE text until the job is final, the client leaves or time runs out."""
    backend = state.celery.backend
    deadline = time.monotonic() + state.events_max_seconds
    yield "retry: 2000\n\n"
    # Subscribed before the first read, so no write between the two is missed.
    pubsub = _subscribe(backend, task_id)
    try:
        yield from _Stream(state, backend, task_id, pubsub).run(deadline)
    finally:
        _close(pubsub, task_id)


def _subscribe(backend: Any, task_id: str) -> Any | None:
    """A pub/sub on the job's channel with a Redis backend; None means poll instead."""
    try:
        client = _redis_client(backend)
        if client is None:
            return None
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(backend.get_key_for_task(task_id))
        return pubsub
    except Exception:
        logger.warning("Event stream falls back to polling for %s", task_id, exc_info=True)
        return None


def _close(pubsub: Any | None, task_id: str) -> None:
    """Free the subscription; a failure here must not hide how the stream ended."""
    if pubsub is not None:
        try:
            pubsub.close()
        except Exception:
            logger.debug("Closing the pub/sub of %s failed", task_id, exc_info=True)


class _Unavailable(Exception):
    """The result backend failed mid-stream: the stream says so once and ends."""


class _Stream:
    """One open stream: what its viewer was last sent, and when anything was sent."""

    def __init__(self, state: Any, backend: Any, task_id: str, pubsub: Any | None) -> None:
        self.state = state
        self.backend = backend
        self.task_id = task_id
        self.pubsub = pubsub
        self.heartbeat: float = state.events_heartbeat
        self.last: dict[str, Any] | None = None
        self.last_sent_at = 0.0

    def run(self, deadline: float) -> Iterator[str]:
        """The whole stream after the retry hint; a backend failure ends it with a notice."""
        try:
            yield from self._documents(deadline)
        except _Unavailable:
            yield _unavailable_event(self.task_id)

    def _documents(self, deadline: float) -> Iterator[str]:
        """The first document, then every change until final or past ``deadline``."""
        document = self._read()
        yield from self._send(document)
        if document["ready"]:
            return
        while time.monotonic() < deadline:
            if self._wait() and (yield from self._send_if_changed(self._read())):
                return
            due = time.monotonic() - self.last_sent_at >= self.heartbeat
            if due and (yield from self._keep_alive()):
                return

    def _read(self) -> dict[str, Any]:
        """What the viewer sees now: the job and its side records (a pending
        cancel, a detached owner), not only what a message said."""
        try:
            return viewer_document(
                self.state, self.task_id, results.read_job(self.backend, self.task_id)
            )
        except Exception as exc:
            raise _Unavailable from exc

    def _wait(self) -> bool:
        """Wait for a message (or a poll interval); True if the job may have changed."""
        if self.pubsub is None:
            time.sleep(self.state.events_poll_interval)
            return True
        try:
            message = self.pubsub.get_message(timeout=min(self.heartbeat, 1.0))
        except Exception as exc:
            raise _Unavailable from exc
        return bool(message and message.get("type") == "message")

    def _send(self, document: dict[str, Any]) -> Iterator[str]:
        yield format_event(document)
        self.last = document
        self.last_sent_at = time.monotonic()

    def _send_if_changed(self, document: dict[str, Any]) -> Generator[str, None, bool]:
        """Send ``document`` unless the viewer has it already; True once it is final."""
        if document == self.last:
            return False
        yield from self._send(document)
        return bool(document["ready"])

    def _keep_alive(self) -> Generator[str, None, bool]:
        """Nothing sent for a heartbeat: re-read (is the worker still there?) and ping.

        Only pub/sub re-reads: polling read the job an interval ago. True once final.
        """
        if self.pubsub is not None:
            try:
                view = results.read_job(self.backend, self.task_id)
            except Exception as exc:
                raise _Unavailable from exc
            # Outside the try, as ever: a failure building the document is not an outage.
            document = viewer_document(self.state, self.task_id, view)
            if (yield from self._send_if_changed(document)):
                return True
        yield ": heartbeat\n\n"
        self.last_sent_at = time.monotonic()
        return False


def _unavailable_event(task_id: str) -> str:
    logger.warning("Result backend unavailable in the event stream of %s", task_id)
    return format_event(
        {
            "task_id": task_id,
            "error": {
                "type": "ResultBackendUnavailable",
                "message": "Job status is temporarily unavailable.",
            },
        },
        event="unavailable",
    )
