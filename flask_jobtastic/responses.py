"""What every endpoint of the blueprint answers with when it does not answer a job.

Errors are JSON with a ``type`` and a ``message`` that says what to fix;
jobs the caller may not see answer like unknown ones; a silent result
backend is a 503 with ``Retry-After``, never a 500.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, abort, current_app, jsonify, make_response, request

from . import results
from .status import build_status

logger = logging.getLogger("flask_jobtastic")


def current_state() -> Any:
    return current_app.extensions["jobtastic"]


def error(status: int, kind: str, message: str, **extra: Any) -> tuple[Response, int]:
    return jsonify({"error": {"type": kind, "message": message}, **extra}), status


def bad_id() -> tuple[Response, int]:
    return error(400, "BadRequest", "Malformed task id: expected a UUID.")


def unknown(task_id: str) -> tuple[Response, int]:
    """Unknown, expired, or someone else's: the same answer for all three."""
    document = build_status(task_id, None)
    return no_store(jsonify(document)), 404


def unavailable(task_id: str | None = None) -> tuple[Response, int]:
    """The result backend did not answer: a handled, retryable condition."""
    logger.warning("Result backend unavailable while reading job status", exc_info=True)
    extra = {"task_id": task_id} if task_id else {}
    response, status = error(
        503,
        "ResultBackendUnavailable",
        "Job status is temporarily unavailable; try again in a moment.",
        **extra,
    )
    response.headers["Retry-After"] = "2"
    return response, status


def no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def needs_header() -> tuple[Response, int] | None:
    """Cross-site request guard for POSTs: browsers only add custom headers same-origin."""
    if not request.headers.get("X-Requested-With"):
        return error(
            400,
            "BadRequest",
            "Send this request with an X-Requested-With header (the widget does).",
        )
    return None


def readable_job(task_id: str, *, must_exist: bool = False) -> tuple[Any, results.JobView]:
    """``(state, view)`` of a job the caller may see; otherwise ends the request.

    Malformed ids are 400, a silent result backend 503, and jobs that are not
    the caller's (or, with ``must_exist``, not known at all) 404.
    """
    if not results.is_valid_task_id(task_id):
        abort(make_response(*bad_id()))
    state = current_state()
    try:
        view = results.read_job(state.celery.backend, task_id)
    except Exception:
        abort(make_response(*unavailable(task_id)))
    readable = state.may_read(view.job, has_side_records=view.has_side_records)
    if not readable or (must_exist and "task_id" not in view.meta):
        abort(make_response(*unknown(task_id)))
    return state, view
