"""The status document: what the browser is told about one job (pure).

Input is the task meta Celery's result backend returns; output is a
JSON-ready dict following the contract every client relies on: ``task_id``,
``state``, ``ready``, ``progress_percent``, ``time_remaining``, plus
``result`` on success and ``error`` on failure. Richer fields sit beside
those, never in their place.

Whatever the backend holds, the document is strict JSON (no NaN, no
Infinity, no Python objects): every stored value goes through the rule of
``jsonsafe``. A record written by another program, or by an older version
(kombu's typed values, bytes, NaN), reads as a ``FAILURE`` of type
``UnreadableRecord`` when its state or result cannot be shown, and loses
only the side fields that cannot be shown otherwise. The only log lines
here are warnings about such records.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping
from typing import Any

from . import states
from .errors import JobFailed
from .jsonsafe import NotJSONError, to_json
from .progress import NO_ESTIMATE

logger = logging.getLogger("flask_jobtastic")

#: Keys the library itself writes into PROGRESS meta and copies through.
_CORE_KEYS = frozenset({"task_id", "state", "ready", "progress_percent", "time_remaining"})

#: What a job whose worker died reads, whoever noticed it first.
WORKER_LOST = {
    "type": "WorkerLost",
    "message": "The worker running this job stopped unexpectedly. Please start it again.",
}

#: Exception types that mean the worker's process died under the job.
_LOST_TYPES = frozenset({"WorkerLostError", "WorkerLost"})

GENERIC_FAILURE = (
    "The job failed. If this keeps happening, contact support and quote error id {error_id}."
)
#: A failed step's message when it is not meant for the user.
GENERIC_STEP_FAILURE = (
    "This step failed. If this keeps happening, contact support and quote error id {error_id}."
)
#: The error type of a record that cannot be read or shown.
UNREADABLE = "UnreadableRecord"
UNREADABLE_MESSAGE = (
    "The stored state of this job cannot be read. If this keeps happening, contact support "
    "and quote error id {error_id}."
)


def error_id_for(task_id: str) -> str:
    """A short id that the worker logs with the traceback and the user can quote.

    Derived from the task id, so it needs no storage and tells an attacker
    nothing they did not know.
    """
    return hashlib.sha256(task_id.encode("utf-8")).hexdigest()[:10]


def _text_of(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a foreign exception class whose __str__ fails
        return ""


def describe_error(task_id: str, exc: Any, *, expose: bool) -> dict[str, Any]:
    """``{"type", "message", "error_id"}`` for a failed job; never a traceback."""
    error_id = error_id_for(task_id)
    if isinstance(exc, BaseException):
        kind = type(exc).__name__
        text = _text_of(exc)
        user_facing = isinstance(exc, JobFailed)
    elif isinstance(exc, Mapping):  # an exception Celery could not rebuild
        kind = _plain_text(exc.get("exc_type", "Error"))
        message = exc.get("exc_message", "")
        parts = message if isinstance(message, list | tuple) else [message]
        text = " ".join(_plain_text(part) for part in parts)
        user_facing = False
    else:
        kind, text, user_facing = "Error", _plain_text(exc), False
    if kind in _LOST_TYPES:  # a pool process killed mid-job (the OOM killer, say)
        return {**WORKER_LOST, "error_id": error_id}
    if not (user_facing or expose) or not text:
        template = UNREADABLE_MESSAGE if kind == UNREADABLE else GENERIC_FAILURE
        text = template.format(error_id=error_id)
    return {"type": kind, "message": text, "error_id": error_id}


def _plain_text(value: Any) -> str:
    """Text of a stored value for an error message (bytes, objects, whatever)."""
    if isinstance(value, str):
        return str.__str__(value)
    try:
        return str(value)
    except Exception:
        return ""


def unreadable_meta(task_id: str, reason: str) -> dict[str, Any]:
    """A meta standing for a record that cannot be read or shown.

    It reads as ``FAILURE``, type ``UnreadableRecord``, with a generic message
    and the error id (``reason`` only with ``JOBTASTIC_EXPOSE_ERRORS``); the
    reason is logged with that id.
    """
    logger.warning(
        "Job %s: its stored record cannot be shown (%s); error id %s",
        task_id,
        reason,
        error_id_for(task_id),
    )
    return {
        "task_id": task_id,
        "status": states.FAILURE,
        "result": {"exc_type": UNREADABLE, "exc_message": reason},
    }


def _clamp_percent(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    if number != number:  # NaN
        return 0.0
    return min(max(number, 0.0), 100.0)


def _seconds_left(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return NO_ESTIMATE
    return value if value >= 0 and math.isfinite(value) else NO_ESTIMATE


#: Rich-progress fields kept after the job ended (from the ``detail`` record).
DETAIL_KEYS = ("steps", "steps_summary", "messages", "counts", "children")


def public_steps(task_id: str, steps: Any, *, expose: bool) -> Any:
    """``steps`` with each failed step's error as the job's error is shown.

    The worker stores a step's message with ``user_facing`` (raised as
    ``JobFailed``); any other message becomes the generic one with the job's
    error id, unless ``expose``. A stored error without the flag (another
    program, an older version) counts as not meant for the user.
    """
    if not isinstance(steps, list):
        return steps
    shown = []
    for step in steps:
        error = step.get("error") if isinstance(step, dict) else None
        if isinstance(error, dict):
            error_id = error_id_for(task_id)
            message = error.get("message")
            if not (error.get("user_facing") is True or expose) or not isinstance(message, str):
                message = GENERIC_STEP_FAILURE.format(error_id=error_id)
            kind = error.get("type")
            public = {
                "type": kind if isinstance(kind, str) else "Error",
                "message": message,
                "error_id": error_id,
            }
            step = {**step, "error": public}
        shown.append(step)
    return shown


def _field(task_id: str, key: str, value: Any, expose: bool) -> tuple[bool, Any]:
    """``(True, shown value)``, or ``(False, None)`` for a value no rule can show."""
    try:
        value = to_json(value, key)
    except NotJSONError as exc:
        logger.warning("Job %s: the stored %r is left out of its status (%s)", task_id, key, exc)
        return False, None
    if key == "steps":
        value = public_steps(task_id, value, expose=expose)
    return True, value


def build_status(
    task_id: str,
    meta: Mapping[str, Any] | None,
    *,
    expose_errors: bool = False,
    detail: Mapping[str, Any] | None = None,
    alive: bool | None = None,
) -> dict[str, Any]:
    """Turn a result-backend meta into the status document (always strict JSON).

    ``meta`` is what ``backend.get_task_meta`` returns; ``None`` or a meta
    without a ``task_id`` (Celery's placeholder for "nothing stored") means
    no store knows the job: state ``UNKNOWN``. ``alive=False`` says the
    worker's heartbeat marker is gone: a job still "running" is then lost.
    """
    if not isinstance(meta, Mapping) or "task_id" not in meta:
        return _core(task_id, states.UNKNOWN, ready=False)
    state = meta.get("status") or states.PENDING
    info = meta.get("result")
    if not isinstance(state, str):
        return _unreadable(task_id, f"its state is a {type(state).__name__}", expose_errors)
    state = str.__str__(state)
    if alive is False and state == states.PROGRESS:
        return _worker_lost(task_id, info)
    document = _core(task_id, state, ready=state in states.READY_STATES)
    if state == states.SUCCESS:
        try:
            _add_result(document, info)
        except NotJSONError as exc:
            return _unreadable(task_id, f"its result holds {exc}", expose_errors)
    elif state == states.FAILURE:
        document["error"] = describe_error(task_id, info, expose=expose_errors)
    elif state == states.STARTED:
        pass  # Celery's meta here is the worker's pid and hostname: not for browsers
    elif isinstance(info, Mapping):
        _add_meta(task_id, state, info, document, expose_errors)
    if detail and state != states.PROGRESS:
        _copy_fields(task_id, detail, document, expose_errors, only=DETAIL_KEYS)
    return document


def _core(task_id: str, state: str, *, ready: bool) -> dict[str, Any]:
    """The fields every client relies on, before the state's own values."""
    return {
        "task_id": task_id,
        "state": state,
        "ready": ready,
        "progress_percent": 0,
        "time_remaining": NO_ESTIMATE,
    }


def _worker_lost(task_id: str, info: Any) -> dict[str, Any]:
    """A job still "running" whose worker stopped renewing its marker: it died mid-job."""
    document = _core(task_id, states.FAILURE, ready=True)
    document["progress_percent"] = _clamp_percent(
        info.get("progress_percent", 0) if isinstance(info, Mapping) else 0
    )
    document["error"] = {**WORKER_LOST, "error_id": error_id_for(task_id)}
    return document


def _add_result(document: dict[str, Any], info: Any) -> None:
    """A success: the result in strict JSON (``NotJSONError`` before any change), 100 %."""
    result = to_json(info, "result")
    document["progress_percent"] = 100
    document["time_remaining"] = 0
    document["result"] = result


def _add_meta(
    task_id: str, state: str, info: Mapping[str, Any], document: dict[str, Any], expose: bool
) -> None:
    """PROGRESS, and PENDING as recorded at send time, carry our meta dict."""
    _copy_fields(task_id, info, document, expose)
    if state == states.PROGRESS:
        document["progress_percent"] = _clamp_percent(info.get("progress_percent", 0))
        document["time_remaining"] = _seconds_left(info.get("time_remaining", NO_ESTIMATE))


def _copy_fields(
    task_id: str,
    source: Mapping[str, Any],
    document: dict[str, Any],
    expose: bool,
    only: tuple[str, ...] | None = None,
) -> None:
    """Copy the side fields of ``source`` the document does not have yet."""
    for key in only if only is not None else list(source):
        if not isinstance(key, str) or key in _CORE_KEYS or key in document or key not in source:
            continue
        kept, value = _field(task_id, key, source[key], expose)
        if kept:
            document[key] = value


def _unreadable(task_id: str, reason: str, expose: bool) -> dict[str, Any]:
    return build_status(task_id, unreadable_meta(task_id, reason), expose_errors=expose)


def document_for(task_id: str, view: Any, *, expose_errors: bool = False) -> dict[str, Any]:
    """``build_status`` from everything the stores returned for one job.

    ``view`` is a ``results.JobView``: Celery's meta, the detail record of a
    finished job, and whether the worker's heartbeat marker is there.
    """
    running = view.meta.get("status") == states.PROGRESS
    return build_status(
        task_id,
        view.meta,
        expose_errors=expose_errors,
        detail=None if running else view.detail,
        alive=view.is_alive if running else None,
    )


#: The job-record field a cancel sets when the run itself must stop.
CANCEL_FIELD = "cancel_requested_at"


def for_viewer(
    document: dict[str, Any], job: Mapping[str, Any] | None, viewer: str | None
) -> dict[str, Any]:
    """The document as one viewer sees it, given the job's ``job`` record.

    ``cancel_pending``: a cancel was asked and the worker has not confirmed
    the stop yet (the state is not final). A viewer who cancelled a run
    shared with others that still wait sees it ``REVOKED`` at once, while
    the run goes on for them.
    """
    if not job or document.get("ready"):
        return document
    detached = job.get("detached") or ()
    if viewer is not None and viewer in detached:
        return {
            "task_id": document["task_id"],
            "state": states.REVOKED,
            "ready": True,
            "progress_percent": document.get("progress_percent", 0),
            "time_remaining": NO_ESTIMATE,
        }
    if job.get(CANCEL_FIELD):
        return {**document, "cancel_pending": True}
    return document
