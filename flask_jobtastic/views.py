"""The ``jobtastic`` blueprint: JSON status of jobs for the browser."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context

from . import results, states
from .assets import asset_dir
from .events import event_stream
from .status import build_status

logger = logging.getLogger("flask_jobtastic")


def _state() -> Any:
    return current_app.extensions["jobtastic"]


def _error(status: int, kind: str, message: str, **extra: Any) -> tuple[Response, int]:
    return jsonify({"error": {"type": kind, "message": message}, **extra}), status


def _unavailable(task_id: str | None = None) -> tuple[Response, int]:
    """The result backend did not answer: a handled, retryable condition."""
    logger.warning("Result backend unavailable while reading job status", exc_info=True)
    extra = {"task_id": task_id} if task_id else {}
    response, status = _error(
        503,
        "ResultBackendUnavailable",
        "Job status is temporarily unavailable; try again in a moment.",
        **extra,
    )
    response.headers["Retry-After"] = "2"
    return response, status


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def status(task_id: str) -> Any:
    """``GET <prefix>/status/<task_id>``: the status document of one job."""
    if not results.is_valid_task_id(task_id):
        return _error(400, "BadRequest", "Malformed task id: expected a UUID.")
    state = _state()
    try:
        meta = results.read_meta(state.celery.backend, task_id)
    except Exception:
        return _unavailable(task_id)
    document = build_status(task_id, meta, expose_errors=state.expose_errors)
    response = _no_store(jsonify(document))
    if document["state"] == states.UNKNOWN:
        return response, 404
    return response


def batch_status() -> Any:
    """``GET <prefix>/status?ids=a,b`` or ``POST <prefix>/status`` with ``{"task_ids": [...]}``.

    Answers ``{"tasks": {id: document}}`` from one result-backend round trip.
    """
    state = _state()
    if request.method == "POST":
        body = request.get_json(silent=True)
        ids = body.get("task_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return _error(400, "BadRequest", 'Send a JSON body {"task_ids": ["<uuid>", ...]}.')
    else:
        raw = request.args.get("ids", "")
        ids = [part for part in raw.split(",") if part]
    if not ids:
        return _error(400, "BadRequest", "Give at least one task id.")
    if len(ids) > state.batch_limit:
        return _error(
            400, "BadRequest", f"At most {state.batch_limit} task ids per request, got {len(ids)}."
        )
    bad = [task_id for task_id in ids if not results.is_valid_task_id(task_id)]
    if bad:
        return _error(400, "BadRequest", "Malformed task id: expected UUIDs.", invalid=bad[:10])
    try:
        metas = results.read_metas(state.celery.backend, ids)
    except Exception:
        return _unavailable()
    documents = {
        task_id: build_status(task_id, metas.get(task_id), expose_errors=state.expose_errors)
        for task_id in ids
    }
    return _no_store(jsonify({"tasks": documents}))


def events(task_id: str) -> Any:
    """``GET <prefix>/events/<task_id>``: Server-Sent Events, one per status change.

    Each ``status`` event carries the full status document; the stream ends
    after a final state. Heartbeat comments keep proxies from closing it.
    """
    if not results.is_valid_task_id(task_id):
        return _error(400, "BadRequest", "Malformed task id: expected a UUID.")
    state = _state()
    response = Response(
        stream_with_context(event_stream(state, task_id)),
        mimetype="text/event-stream",
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return response


def create_blueprint() -> Blueprint:
    """A fresh blueprint per app, so each app may mount it at its own prefix."""
    blueprint = Blueprint(
        "jobtastic",
        __name__,
        static_folder=asset_dir("static"),
        static_url_path="/static",
        template_folder=asset_dir("templates"),
    )
    blueprint.add_url_rule("/events/<path:task_id>", "events", events, methods=["GET"])
    blueprint.add_url_rule("/status/<path:task_id>", "status", status, methods=["GET"])
    blueprint.add_url_rule("/status", "batch_status", batch_status, methods=["GET", "POST"])
    return blueprint
