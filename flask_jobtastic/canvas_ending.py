"""How a canvas ends: its final state written once, the parts still out stopped.

Whoever ends a canvas (its last part, the first failure, a cancel, a reader
that found every running part lost, a broker that refused a part) ends it
here: :func:`finish` writes the final meta and the counts in one script that
refuses to replace a final state; :func:`stop_parts` asks the parts not
finished to stop, counting those never sent as revoked at once.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, cast

from billiard.exceptions import WorkerLostError
from celery.exceptions import TaskRevokedError

from . import canvas_math, canvas_store, herd, results, states
from .canvas_plan import Plan
from .status import error_id_for

if TYPE_CHECKING:
    from .state import JobtasticState

logger = logging.getLogger("flask_jobtastic")


def count_revoked(state: JobtasticState, canvas_id: str, part_id: str) -> None:
    """Count a part that will never run (or never report) as revoked."""
    try:
        canvas_store.report(state.celery.backend, canvas_id, part_id, "revoked", 0.0, 0.0)
    except Exception:
        logger.warning("Could not report part %s of canvas %s", part_id, canvas_id, exc_info=True)


def failure_of(state: JobtasticState, part_id: Any) -> BaseException | None:
    """The exception a failed part stored, for a canvas's FAILURE."""
    if not isinstance(part_id, str):
        return None
    info = results.read_job(state.celery.backend, part_id).meta.get("result")
    return info if isinstance(info, BaseException) else None


def settle_lost(state: JobtasticState, canvas_id: str) -> None:
    """A reader stored a canvas as lost (no part renewed its marker): stop the rest and
    count the parts that were running as failed."""
    record = canvas_store.read_record(state.celery.backend, canvas_id)
    if record is None:
        return
    try:
        stop_parts(state, record, end_if_settled=False)
        finish(state, record, states.FAILURE, error=WorkerLostError(), lost=True)
    except Exception:
        logger.warning("Could not stop the parts of lost canvas %s", canvas_id, exc_info=True)


def stop_parts(
    state: JobtasticState,
    record: dict[str, Any],
    *,
    end_if_settled: bool = True,
    broker_down: bool = False,
) -> None:
    """Ask every part not finished to stop; parts never sent count as revoked at once.

    With nothing left running, the canvas reads REVOKED (unless ``end_if_settled``
    is False: it is about to fail). ``broker_down``: no broadcast, every part
    not finished counts as revoked at once.
    """
    backend = state.celery.backend
    canvas_id = record["id"]
    ids: list[str] = record["ids"]
    plan = Plan.from_record(record["plan"])
    part_states = canvas_store.read_part_states(backend, canvas_id, ids)
    sent = canvas_math.sent_flags(plan.kind, len(plan.parts), part_states)
    waiting = [i for i, s in enumerate(part_states) if s not in canvas_math.FINISHED]
    canvas_store.mark_cancelled(backend, canvas_id, [ids[i] for i in waiting])
    for i in waiting:
        if not sent[i] or broker_down:  # a part sent before the outage stops as it starts
            count_revoked(state, canvas_id, ids[i])
    queued = [] if broker_down else [ids[i] for i in waiting if sent[i]]
    if queued:
        try:  # a worker that holds one of these messages drops it
            state.celery.control.revoke(queued)
        except Exception:
            logger.warning("Could not broadcast the cancel of canvas %s", canvas_id, exc_info=True)
    sums = canvas_store.read_sums(backend, canvas_id)
    if end_if_settled and sums is not None and canvas_math.is_settled(sums):
        finish(state, record, states.REVOKED)


def results_of(state: JobtasticState, ids: list[str]) -> list[Any]:
    """The parts' results in order, read in one round trip; None for a part that has none."""
    views = results.read_jobs(state.celery.backend, ids)
    return [
        views[pid].meta.get("result") if views[pid].meta.get("status") == states.SUCCESS else None
        for pid in ids
    ]


def finish(
    state: JobtasticState,
    record: dict[str, Any],
    final_state: str,
    *,
    result: Any = None,
    error: BaseException | None = None,
    failed_part: str | None = None,
    lost: bool = False,
) -> bool:
    """Write the canvas's final state, once; False when it already had one.

    Its counts are written whatever: the parts stopped since are counted as
    they stop. ``lost``: the parts still running died with their worker.
    """
    backend = state.celery.backend
    canvas_id = record["id"]
    if final_state == states.SUCCESS:
        info: Any = result
    else:
        if error is None:
            error = TaskRevokedError("cancelled")
        info = backend.prepare_exception(cast(Exception, error))
    meta = results.task_meta(canvas_id, final_state, info)
    meta["date_done"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    sums = canvas_store.read_sums(backend, canvas_id) or {}
    plan = Plan.from_record(record["plan"])
    children = canvas_math.children_counts(sums, plan.size)
    if final_state != states.SUCCESS:  # what still waits or runs has been asked to stop
        children = canvas_math.stopping(children, lost=lost)
    detail = {"children": children, "ended_at": time.time()}
    if not canvas_store.write_final(backend, canvas_id, meta, detail):
        return False
    if failed_part is not None:
        logger.error(
            "Canvas %s failed, error id %s: its part %s failed (error id %s): %s: %s",
            canvas_id,
            error_id_for(canvas_id),
            failed_part,
            error_id_for(failed_part),
            type(error).__name__,
            error,
        )
    if record.get("herd_key"):
        herd.release_herd_key(state.cache_backend, record["herd_key"], canvas_id)
    if record.get("tracked"):
        job_state = {"SUCCESS": "succeeded", "FAILURE": "failed", "REVOKED": "revoked"}
        state.record_state(canvas_id, job_state[final_state])
    return True
