"""How a job ends: succeeded, failed, retrying, lost or cancelled.

Each ending has one routine here, whoever notices it: the worker running
the job (Celery's hooks, a stop seen at a progress write), Celery's signal
receivers in the worker's main process, and the cancel view on the web.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from . import canvas_flow, guards, herd, keys, results, states
from .errors import JobStopped
from .heartbeat import alive_for
from .status import CANCEL_FIELD, error_id_for

if TYPE_CHECKING:
    from .running import RunContext
    from .state import JobtasticState
    from .task import JobtasticTask

logger = logging.getLogger("flask_jobtastic")


def release_herd_key(
    state: JobtasticState, herd_key: str | None, task_id: str, *, held: bool = False
) -> None:
    """Free a herd key if it still holds this run's id (``held``: it surely does)."""
    if herd_key:
        herd.release_herd_key(state.cache_backend, herd_key, task_id, held=held)


def settle_revoked(
    state: JobtasticState | None, task_id: str, herd_key: str | None, *, tracked: bool = True
) -> None:
    """A cancelled job's bookkeeping: its herd key is freed, the registry says revoked.

    The one routine for a job stopped at a write and for a message Celery
    dropped as revoked.
    """
    if state is None:
        return
    release_herd_key(state, herd_key, task_id)
    if tracked:
        state.record_state(task_id, "revoked")


# -- cancelled, or declared lost, while running --------------------------------------


def stop(task: JobtasticTask, context: RunContext, verdict: str) -> NoReturn:
    """End a run that was cancelled (REVOKED) or declared lost (left FAILURE).

    The clean-up hook runs first and the herd key goes last, once the run has
    really stopped, so no identical call starts a second run beside it.
    """
    task_id = context.task_id
    assert task_id is not None
    with context.lock:  # the heartbeat must not write anything after this
        context.finished = True
    if verdict == guards.FINAL:
        logger.warning(
            "Job %s stops: its state became final while it ran (a reader found its "
            "heartbeat missing and reported the worker lost)",
            task_id,
        )
        _report_to_canvas(task, context, found_final=True)
        raise JobStopped(verdict)
    logger.info("Job %s was cancelled; stopping it", task_id)
    try:
        task.on_cancel(task_id, context.args, context.kwargs)
    except Exception:
        logger.exception("on_cancel of job %s failed", task_id)
    try:
        task.backend.mark_as_revoked(task_id, reason="cancelled")
    except Exception:
        logger.warning("Could not mark job %s revoked", task_id, exc_info=True)
    herd_key = context.herd_key if context.herd_claimed else None
    settle_revoked(task._state_or_none(), task_id, herd_key, tracked=context.tracked)
    _report_to_canvas(task, context, found_final=False)  # cleaned up: its canvas may end
    raise JobStopped(verdict)


# -- asked to stop, from the web ---------------------------------------------------


def request_cancel(state: JobtasticState, task_id: str, sender: str | None) -> bool:
    """Ask a job to stop on behalf of the current owner; the worker confirms it.

    Returns whether the run will stop; on a run shared by several owners, the
    caller is only detached while others still wait on it. A backend error
    is raised (nothing was asked); a failed broadcast is logged.
    """
    backend = state.celery.backend
    owner = state.current_owner()
    _, will_stop = guards.update_job(backend, task_id, _cancel_by(owner))
    with contextlib.suppress(Exception):  # open event streams show the pending cancel
        guards.republish(backend, task_id)
    if will_stop:
        try:  # queued jobs: the worker that holds the message drops it
            state.celery.control.revoke(task_id)
        except Exception:
            logger.warning("Could not broadcast the cancel of %s", task_id, exc_info=True)
    elif sender == owner:
        state.forget(task_id)  # the sender left a run others still wait on
    return bool(will_stop)


def _cancel_by(owner: str | None) -> Callable[[dict[str, Any]], bool]:
    """The job-record change of one cancel: detach ``owner`` or stop the run."""

    def change(job: dict[str, Any]) -> bool:
        if job.get("shared") and owner is not None:
            waiting = job.get("owners") or ([job["owner"]] if job.get("owner") else [])
            detached = [o for o in job.get("detached") or [] if o != owner] + [owner]
            job["detached"] = detached
            if any(other not in detached for other in waiting):
                return False  # others still wait: the run goes on for them
        job[CANCEL_FIELD] = time.time()
        return True

    return change


# -- Celery's hooks, in the worker -----------------------------------------------------


def _record_own_state(task: JobtasticTask, task_id: str, job_state: str) -> None:
    """The registry state of the run this thread just ran, if the registry tracks it."""
    context = task._run_slot.context
    if context is not None and context.task_id == task_id and context.tracked:
        state = task._state_or_none()
        if state is not None:
            state.record_state(task_id, job_state)


def succeeded(
    task: JobtasticTask, task_id: str, args: Any, kwargs: Any, retval: Any = None
) -> None:
    """The registry says succeeded; the id is cached for ``cache_duration``."""
    _record_own_state(task, task_id, "succeeded")
    state = task._state_or_none()
    if task.cache_duration >= 0 and state is not None:
        cache_key = run_cache_key(task, task_id, args, kwargs)
        if cache_key is not None:
            herd.cache_set(
                state.cache_backend, keys.result_key(cache_key), task_id, cache_ttl(task)
            )
    canvas_id = task._header(canvas_flow.CANVAS_HEADER)
    if canvas_id and state is not None:
        canvas_flow.report_ended(state, canvas_id, task_id, "succeeded", result=retval)


def cache_ttl(task: JobtasticTask) -> int:
    """``cache_duration``, but never longer than the result backend keeps the result:
    a cached id whose result expired would read as unknown."""
    expires = getattr(task.backend, "expires", None)
    keep = int(expires) if isinstance(expires, int | float) and expires > 0 else 0
    if not keep:
        return task.cache_duration
    return keep if task.cache_duration == 0 else min(task.cache_duration, keep)


def failed(task: JobtasticTask, exc: BaseException, task_id: str, einfo: Any) -> None:
    """The registry says failed; the traceback is logged with the error id the user sees."""
    _record_own_state(task, task_id, "failed")
    canvas_id = task._header(canvas_flow.CANVAS_HEADER)
    state = task._state_or_none()
    if canvas_id and state is not None:
        canvas_flow.report_ended(state, canvas_id, task_id, "failed", error=exc)
    logger.error(
        "Job %s (%s) failed, error id %s: %s: %s\n%s",
        task_id,
        task.name,
        error_id_for(task_id),
        type(exc).__name__,
        exc,
        getattr(einfo, "traceback", ""),
    )


def retrying(task: JobtasticTask, task_id: str) -> None:
    """A retry is still the same job: the registry says ``retrying``."""
    _record_own_state(task, task_id, "retrying")


def keep_claim_for_retry(task: JobtasticTask, options: dict[str, Any]) -> None:
    """Hold the herd claim while a retrying job waits to run again.

    Without it an identical call made during the countdown would start a
    second run beside the one waiting to retry.
    """
    context = task._run_slot.context
    task_id = task.request.id
    if context is None or not context.herd_key or not context.herd_claimed or not task_id:
        return
    state = task._state_or_none()
    if state is not None:
        wait = int(_retry_wait(task, options)) + alive_for(task.herd_avoidance_timeout)
        herd.refresh_herd_key(state.cache_backend, context.herd_key, task_id, wait)


def _retry_wait(task: JobtasticTask, options: dict[str, Any]) -> float:
    """Seconds until a ``retry(countdown=..., eta=...)`` runs again (Celery's default delay)."""
    countdown = options.get("countdown")
    eta = options.get("eta")
    if isinstance(countdown, int | float):
        return max(float(countdown), 0.0)
    if eta is not None:
        with contextlib.suppress(Exception):
            return max(float(eta.timestamp()) - time.time(), 0.0)
    delay = task.default_retry_delay
    return float(delay) if isinstance(delay, int | float) else 0.0


def returned(task: JobtasticTask, status: str, task_id: str, args: Any, kwargs: Any) -> None:
    """Whatever the outcome: the job record outlives the result, the herd key is freed."""
    if task._header("jobtastic_record") and not getattr(task.backend, "extends_job_record", False):
        with contextlib.suppress(Exception):  # logged by the next read, if it matters
            guards.extend_job_record(task.backend, task_id)
    context = task._run_slot.context
    ran_here = context is not None and context.task_id == task_id
    if status not in states.READY_STATES or (ran_here and not _claimed(context)):
        return
    state = task._state_or_none()
    cache_key = run_cache_key(task, task_id, args, kwargs)
    if state is not None and cache_key is not None:
        release_herd_key(state, keys.herd_key(cache_key), task_id, held=ran_here)


def _claimed(context: RunContext | None) -> bool:
    return context is not None and context.herd_claimed


def run_cache_key(task: JobtasticTask, task_id: str, args: Any, kwargs: Any) -> str | None:
    """The cache key of this run: read once as it started, else from the arguments."""
    context = task._run_slot.context
    if context is not None and context.task_id == task_id and context.cache_key:
        return context.cache_key
    try:
        return task.cache_key_for(tuple(args or ()), dict(kwargs or {}))
    except TypeError:
        return None


# -- Celery's signals, in the worker's main process --------------------------------------


def _claimed_key(task: JobtasticTask, request: Any, headers: dict[str, Any]) -> str | None:
    """The herd key a message's job claimed, if it claimed one."""
    if getattr(request, "jobtastic_herd", None) is False or headers.get("jobtastic_herd") is False:
        return None
    cache_key = headers.get("jobtastic_key") or getattr(request, "jobtastic_key", None)
    if cache_key is None:
        with contextlib.suppress(TypeError):
            cache_key = task.cache_key_for(tuple(request.args or ()), dict(request.kwargs or {}))
    return keys.herd_key(cache_key) if cache_key else None


def revoked_unrun(task: JobtasticTask, request: Any) -> None:
    """A message Celery dropped, or a job it terminated, as revoked."""
    state = task._state_or_none()
    settle_revoked(state, request.id, _claimed_key(task, request, {}))
    _report_from_main_process(state, request.id, "revoked", None)


def worker_lost(task: JobtasticTask, task_id: str, error: BaseException | None = None) -> None:
    """A pool process killed mid-job (the OOM killer, say), as Celery's main
    process reports it: the registry says failed and the herd key is freed."""
    request = task.request  # Celery pushes the lost job's request for this signal
    headers = getattr(request, "headers", None) or {}
    state = task._state_or_none()
    if state is not None:
        release_herd_key(state, _claimed_key(task, request, headers), task_id)
        state.record_state(task_id, "failed")
        _report_from_main_process(state, task_id, "failed", error)


def _report_to_canvas(task: JobtasticTask, context: RunContext, *, found_final: bool) -> None:
    """A part stopped mid-run: its canvas counts it (cancelled, or as its final state says)."""
    state = task._state_or_none()
    if context.canvas_id and context.task_id and state is not None:
        canvas_flow.report_stopped(state, context.canvas_id, context.task_id, found_final)


def _report_from_main_process(
    state: JobtasticState | None, task_id: str, part_state: str, error: BaseException | None
) -> None:
    """A part ended in the worker's main process: its canvas is named in its job record."""
    if state is None:
        return
    try:
        job = results.read_job(state.celery.backend, task_id).job
    except Exception:
        logger.warning("Could not read the job record of %s", task_id, exc_info=True)
        return
    canvas_id = job.get("canvas") if job else None
    if isinstance(canvas_id, str):
        canvas_flow.report_ended(state, canvas_id, task_id, part_state, error=error)
