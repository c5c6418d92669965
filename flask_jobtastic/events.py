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
from collections.abc import Iterator
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
    heartbeat = state.events_heartbeat
    yield "retry: 2000\n\n"

    client = None
    pubsub = None
    try:
        client = _redis_client(backend)
        if client is not None:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(backend.get_key_for_task(task_id))
    except Exception:
        logger.warning("Event stream falls back to polling for %s", task_id, exc_info=True)
        pubsub = None

    last: dict[str, Any] | None = None
    try:
        try:
            document = viewer_document(state, task_id, results.read_job(backend, task_id))
        except Exception:
            yield _unavailable_event(task_id)
            return
        yield format_event(document)
        last = document
        if document["ready"]:
            return
        last_sent_at = time.monotonic()
        while time.monotonic() < deadline:
            changed = True
            if pubsub is not None:
                try:
                    message = pubsub.get_message(timeout=min(heartbeat, 1.0))
                except Exception:
                    yield _unavailable_event(task_id)
                    return
                changed = bool(message and message.get("type") == "message")
            else:
                time.sleep(state.events_poll_interval)
            if changed:
                # the message says something changed; what the viewer sees also
                # depends on the side records (a pending cancel, a detached owner)
                try:
                    document = viewer_document(state, task_id, results.read_job(backend, task_id))
                except Exception:
                    yield _unavailable_event(task_id)
                    return
                if document != last:
                    yield format_event(document)
                    last = document
                    last_sent_at = time.monotonic()
                    if document["ready"]:
                        return
            if time.monotonic() - last_sent_at >= heartbeat:
                if pubsub is not None:  # no message for a while: is the worker still there?
                    try:
                        view = results.read_job(backend, task_id)
                    except Exception:
                        yield _unavailable_event(task_id)
                        return
                    document = viewer_document(state, task_id, view)
                    if document != last:
                        yield format_event(document)
                        last = document
                        if document["ready"]:
                            return
                yield ": heartbeat\n\n"
                last_sent_at = time.monotonic()
    finally:
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:
                logger.debug("Closing the pub/sub of %s failed", task_id, exc_info=True)


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
