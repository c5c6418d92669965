"""What one viewer is told about one job: the status document, as the views
and the event stream serve it.

Pure rules live in ``status.py``; this adds what needs the stores and the
request: the viewer (a detached owner of a shared run, a pending cancel) and
settling a lost worker's job, so that the FAILURE a reader shows is final.
"""

from __future__ import annotations

import logging
from typing import Any

from billiard.exceptions import WorkerLostError

from . import canvas_ending, canvas_flow, guards, herd, results, states
from .status import WORKER_LOST, document_for, for_viewer

logger = logging.getLogger("flask_jobtastic")


def viewer_document(state: Any, task_id: str, view: results.JobView) -> dict[str, Any]:
    """The status document for the current viewer; a lost worker's job is settled."""
    document = document_for(task_id, view, expose_errors=state.expose_errors)
    lost = view.meta.get("status") == states.PROGRESS and view.is_alive is False
    if lost and not settle_lost_job(state, task_id, view) and view.has_side_records:
        # Its heartbeat came back between the read and the settling (a paused
        # result backend): what the job is now, not a FAILURE that would turn back.
        try:
            fresh = results.read_job(state.celery.backend, task_id)
        except Exception:
            logger.warning("Could not read job %s again", task_id, exc_info=True)
        else:
            view = fresh
            document = document_for(task_id, view, expose_errors=state.expose_errors)
    return for_viewer(document, view.job, state.current_owner())


def settle_lost_job(state: Any, task_id: str, view: results.JobView) -> bool:
    """Make the WorkerLost a reader found final everywhere: meta, herd key, registry.

    Returns False when it was not stored because the job is no longer lost.

    Stored, so that the FAILURE never turns back into PROGRESS should the
    worker have been alive after all (a result-backend outage longer than
    its heartbeat): the job sees the final state at its next write and stops.
    """
    failure: dict[str, Any] = {
        "status": states.FAILURE,
        "result": {
            "exc_type": "WorkerLostError",
            "exc_message": [WORKER_LOST["message"]],
            "exc_module": "billiard.exceptions",
        },
        "traceback": None,
        "children": [],
        "date_done": None,
        "task_id": task_id,
    }
    try:
        if not guards.settle_lost(state.celery.backend, task_id, failure):
            return False  # alive again, or already final: worth reading again
    except Exception:
        logger.warning("Could not store job %s as lost", task_id, exc_info=True)
        return True  # the store is down: a second read would not answer either
    herd_key = (view.job or {}).get("herd_key")
    if herd_key:
        herd.release_herd_key(state.cache_backend, herd_key, task_id)
    state.record_state(task_id, "failed")
    canvas_id = (view.job or {}).get("canvas")
    if isinstance(canvas_id, str):  # a part of a canvas: the canvas fails with it
        canvas_flow.report_ended(state, canvas_id, task_id, "failed", error=WorkerLostError())
    elif view.is_canvas:  # a canvas whose running parts' workers all died
        canvas_ending.settle_lost(state, task_id)
    return True
