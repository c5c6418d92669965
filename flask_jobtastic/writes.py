"""A running job's writes: its progress, and the stop checks each one carries.

Every progress write of a job goes through :func:`write_progress` (from
``update_progress``, the steps and counts, the run's first and closing
writes). On Redis the write and its check are one script (``guards``): the
job learns in that same round trip that it was cancelled or declared lost,
and stops there (``lifecycle.stop``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celery.worker import state as worker_state

from . import canvas_flow, guards, lifecycle, states
from .heartbeat import alive_for

if TYPE_CHECKING:
    from .running import RunContext
    from .task import JobtasticTask

logger = logging.getLogger("flask_jobtastic")


def write_progress(task: JobtasticTask, context: RunContext, meta: dict[str, Any]) -> None:
    """Write PROGRESS meta; a result-backend blip must not kill the job.

    The job's first write also sets its alive marker, and is preceded by
    PROGRESS 0 if the job had not shown it yet. Also the job's moment to
    notice a cancel: a revoked job stops at its next progress write.
    """
    task_id = context.task_id
    if not task_id:
        return
    if task_id in worker_state.revoked:  # threads and solo pools see the broadcast
        lifecycle.stop(task, context, guards.CANCELLED)
    if context.verdict != guards.GO_ON:  # the heartbeat learned it first
        lifecycle.stop(task, context, context.verdict)
    if context.details_used:
        meta = {**meta, **context.details()}
    if context.started:
        verdict = _store_progress(task, task_id, (meta,), None)
    else:
        with context.lock:  # the heartbeat may be writing PROGRESS 0 right now
            if context.started or meta.get("progress_percent") == 0:
                metas: tuple[dict[str, Any], ...] = (meta,)
            else:
                metas = (context.start_meta, meta)
            verdict = _store_progress(
                task,
                task_id,
                metas,
                None if context.started else alive_for(task.herd_avoidance_timeout),
                force=context.redelivered and not context.started,
            )
            context.started = True
    if verdict != guards.GO_ON:
        lifecycle.stop(task, context, verdict)
    if context.tracked or context.canvas_id:
        state = task._state_or_none()
        if state is not None and context.tracked:
            state.record_progress(task_id, meta["progress_percent"])
        if state is not None and context.canvas_id:
            timeout = alive_for(task.herd_avoidance_timeout)
            canvas_flow.report_progress(state, context.canvas_id, task_id, meta, timeout)


def _store_progress(
    task: JobtasticTask,
    task_id: str,
    metas: tuple[dict[str, Any], ...],
    alive_for: int | None,
    *,
    force: bool = False,
) -> str:
    """Write PROGRESS unless the job was cancelled or its state is final.

    Returns what the write found (``guards.GO_ON``, ``CANCELLED``, ``FINAL``);
    a backend that does not answer is logged and means go on.
    """
    try:
        verdict = guards.guarded_progress(
            task.backend, task_id, *metas, alive_for=alive_for, force=force
        )
        if verdict is None:
            for meta in metas:
                task.update_state(task_id=task_id, state=states.PROGRESS, meta=meta)
            return guards.GO_ON
        return verdict
    except Exception:
        logger.warning("Could not write progress of job %s", task_id, exc_info=True)
        return guards.GO_ON


def check_stop(task: JobtasticTask, context: RunContext) -> None:
    """Ask the result backend whether this run must stop; stop it if so."""
    verdict = context.verdict
    if verdict == guards.GO_ON and context.task_id:
        try:
            verdict = guards.check_run(task.backend, context.task_id, force=context.redelivered)
        except Exception:
            logger.warning("Could not check job %s for a cancel", context.task_id, exc_info=True)
            return
    if verdict != guards.GO_ON:
        lifecycle.stop(task, context, verdict)
