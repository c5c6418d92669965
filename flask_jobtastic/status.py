"""The status document: what the browser is told about one job (pure).

Input is the task meta Celery's result backend returns; output is a
JSON-ready dict following the contract every client relies on: ``task_id``,
``state``, ``ready``, ``progress_percent``, ``time_remaining``, plus
``result`` on success and ``error`` on failure. Richer fields sit beside
those, never in their place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from . import states
from .errors import JobFailed
from .progress import NO_ESTIMATE

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


def error_id_for(task_id: str) -> str:
    """A short id that the worker logs with the traceback and the user can quote.

    Derived from the task id, so it needs no storage and tells an attacker
    nothing they did not know.
    """
    return hashlib.sha256(task_id.encode("utf-8")).hexdigest()[:10]


def describe_error(task_id: str, exc: Any, *, expose: bool) -> dict[str, Any]:
    """``{"type", "message", "error_id"}`` for a failed job; never a traceback."""
    error_id = error_id_for(task_id)
    if isinstance(exc, BaseException):
        kind = type(exc).__name__
        text = str(exc)
        user_facing = isinstance(exc, JobFailed)
    elif isinstance(exc, Mapping):  # an exception Celery could not rebuild
        kind = str(exc.get("exc_type", "Error"))
        message = exc.get("exc_message", "")
        text = " ".join(map(str, message)) if isinstance(message, list | tuple) else str(message)
        user_facing = False
    else:
        kind, text, user_facing = "Error", str(exc), False
    if kind in _LOST_TYPES:  # a pool process killed mid-job (the OOM killer, say)
        return {**WORKER_LOST, "error_id": error_id}
    if not (user_facing or expose) or not text:
        text = GENERIC_FAILURE.format(error_id=error_id)
    return {"type": kind, "message": text, "error_id": error_id}


def _clamp_percent(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    if number != number:  # NaN
        return 0.0
    return min(max(number, 0.0), 100.0)


#: Rich-progress fields kept after the job ended (from the ``detail`` record).
DETAIL_KEYS = ("steps", "steps_summary", "messages", "counts")


def build_status(
    task_id: str,
    meta: Mapping[str, Any] | None,
    *,
    expose_errors: bool = False,
    detail: Mapping[str, Any] | None = None,
    alive: bool | None = None,
) -> dict[str, Any]:
    """Turn a result-backend meta into the status document.

    ``meta`` is what ``backend.get_task_meta`` returns; ``None`` or a meta
    without a ``task_id`` (Celery's placeholder for "nothing stored") means
    no store knows the job: state ``UNKNOWN``. ``alive=False`` says the
    worker's heartbeat marker is gone: a job still "running" is then lost.
    """
    if not meta or "task_id" not in meta:
        return {
            "task_id": task_id,
            "state": states.UNKNOWN,
            "ready": False,
            "progress_percent": 0,
            "time_remaining": NO_ESTIMATE,
        }
    state = str(meta.get("status") or states.PENDING)
    info = meta.get("result")
    if alive is False and state == states.PROGRESS:
        # the worker stopped renewing its marker: it died mid-job
        return {
            "task_id": task_id,
            "state": states.FAILURE,
            "ready": True,
            "progress_percent": _clamp_percent(
                info.get("progress_percent", 0) if isinstance(info, Mapping) else 0
            ),
            "time_remaining": NO_ESTIMATE,
            "error": {**WORKER_LOST, "error_id": error_id_for(task_id)},
        }
    document: dict[str, Any] = {
        "task_id": task_id,
        "state": state,
        "ready": state in states.READY_STATES,
        "progress_percent": 0,
        "time_remaining": NO_ESTIMATE,
    }
    if state == states.SUCCESS:
        document["progress_percent"] = 100
        document["time_remaining"] = 0
        document["result"] = info
    elif state == states.FAILURE:
        document["error"] = describe_error(task_id, info, expose=expose_errors)
    elif isinstance(info, Mapping):
        # PROGRESS, and PENDING as recorded at send time, carry our meta dict.
        for key, value in info.items():
            if key not in _CORE_KEYS:
                document[key] = value
        if state == states.PROGRESS:
            document["progress_percent"] = _clamp_percent(info.get("progress_percent", 0))
            remaining = info.get("time_remaining", NO_ESTIMATE)
            document["time_remaining"] = (
                remaining if isinstance(remaining, int | float) and remaining >= 0 else NO_ESTIMATE
            )
    if detail and state not in (states.PROGRESS,):
        for key in DETAIL_KEYS:
            if key in detail and key not in document:
                document[key] = detail[key]
    return document


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
