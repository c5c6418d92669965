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
from .status import build_status, document_for

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
    expose = state.expose_errors
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
            document = document_for(
                task_id, results.read_job(backend, task_id), expose_errors=expose
            )
        except Exception:
            yield _unavailable_event(task_id)
            return
        yield format_event(document)
        last = document
        if document["ready"]:
            return
        last_sent_at = time.monotonic()
        while time.monotonic() < deadline:
            meta = None
            if pubsub is not None:
                try:
                    message = pubsub.get_message(timeout=min(heartbeat, 1.0))
                except Exception:
                    yield _unavailable_event(task_id)
                    return
                if message and message.get("type") == "message":
                    meta = results.decode_meta(backend, task_id, message["data"])
            else:
                time.sleep(state.events_poll_interval)
                try:
                    meta = results.read_meta(backend, task_id)
                except Exception:
                    yield _unavailable_event(task_id)
                    return
            if meta is not None:
                document = build_status(task_id, meta, expose_errors=expose)
                if document["ready"]:
                    document = _final_document(backend, task_id, meta, expose)
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
                    document = document_for(task_id, view, expose_errors=expose)
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


def _final_document(backend: Any, task_id: str, meta: Any, expose: bool) -> dict[str, Any]:
    """The last document, with the steps and counts the job saved at its end."""
    try:
        detail = results.read_job(backend, task_id).detail
    except Exception:
        detail = None
    return build_status(task_id, meta, expose_errors=expose, detail=detail)


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
