"""How a canvas moves on: a part reports, the next part is sent, the canvas ends.

Runs wherever a part's state changes: in the worker running the part (its
start, progress writes and ending), in the worker's main process (a part
dropped as revoked, a pool process killed) and, for a canvas run in-process
as the broker fallback, in the web process. Each report updates the
canvas's sums atomically (``canvas_store.report``); whoever's report
completes a stage sends the next one, and whoever's report ends the canvas
writes its final state, once (``canvas_ending``).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, cast

from celery import Task
from celery.exceptions import TaskRevokedError

from . import canvas_math, canvas_store, keys, results, states
from .backend import single_attempt
from .canvas_ending import count_revoked, failure_of, finish, results_of, stop_parts
from .canvas_plan import Part, Plan
from .errors import BrokerUnavailable

if TYPE_CHECKING:
    from .state import JobtasticState
    from .task import JobtasticTask

logger = logging.getLogger("flask_jobtastic")

#: The message header that makes a job a part of a canvas: the canvas's id.
CANVAS_HEADER = "jobtastic_canvas"


def part_headers(canvas_id: str, cache_key: str | None) -> dict[str, Any]:
    headers: dict[str, Any] = {
        CANVAS_HEADER: canvas_id,
        "jobtastic_record": True,
        "jobtastic_herd": False,  # the canvas holds the herd claim, not its parts
        "jobtastic_sent_at": time.time(),
    }
    if cache_key is not None:
        headers["jobtastic_key"] = cache_key  # its result is cached as a job's would be
    return headers


def part_task(state: JobtasticState, name: str) -> JobtasticTask:
    """The ``JobtasticTask`` registered under ``name`` (checked as the canvas started)."""
    return cast("JobtasticTask", state.celery.tasks[name])


def part_cache_key(
    state: JobtasticState, part: Part, args: tuple[Any, ...], owner: Any
) -> str | None:
    """Where a part's result is cached (owner-scoped where results are private)."""
    task = part_task(state, part.task)
    if task.cache_duration < 0:
        return None
    try:
        cache_key = str(task.cache_key_for(args, part.kwargs))
    except TypeError:
        return None
    if owner is not None and not task.share_across_owners:
        cache_key = keys.owner_scoped(cache_key, owner)
    return cache_key


def send_part(
    state: JobtasticState,
    record: dict[str, Any],
    index: int,
    previous: tuple[Any, ...] = (),
) -> None:
    """Send part ``index`` of the canvas (the body is the last index), or run it here.

    ``previous``: the result handed on (a chain's last stage's, a chord
    header's list), put before the part's own arguments unless it is
    immutable. Raises what the broker raised.
    """
    plan = Plan.from_record(record["plan"])
    part = plan.all_parts()[index]
    part_id = record["ids"][index]
    args = part.args if part.immutable or not previous else (*previous, *part.args)
    task = state.celery.tasks[part.task]
    headers = part_headers(record["id"], part_cache_key(state, part, args, record.get("owner")))
    if record.get("eager"):
        with single_attempt(task.backend):
            Task.apply(task, args, part.kwargs, task_id=part_id, headers=headers)
        return
    Task.apply_async(
        task,
        args,
        part.kwargs,
        task_id=part_id,
        headers=headers,
        retry_policy=state.publish_retry_policy,
    )


# -- reports -------------------------------------------------------------------------


def report_started(state: JobtasticState, canvas_id: str, part_id: str, alive_for: int) -> bool:
    """A part starts; True when its canvas was cancelled (or failed) meanwhile."""
    sums = _report(state, canvas_id, part_id, "running", 0.0, 0.0, alive_for=alive_for)
    return bool(sums and sums.get("cancelled"))


def report_progress(
    state: JobtasticState, canvas_id: str, part_id: str, meta: dict[str, Any], alive_for: int
) -> None:
    """A part's progress write: the canvas's PROGRESS follows."""
    percent = meta.get("progress_percent")
    fraction = float(percent) / 100 if isinstance(percent, int | float) else 0.0
    total = meta.get("total")
    weight = float(total) if isinstance(total, int | float) and total > 0 else 0.0
    _report(state, canvas_id, part_id, "running", fraction, weight, alive_for=alive_for)


def renew(state: JobtasticState, canvas_id: str, alive_for: int) -> None:
    """A running part's heartbeat beat: its canvas is alive as long as one part is."""
    try:
        canvas_store.renew_marker(state.celery.backend, canvas_id, alive_for)
    except Exception:
        logger.warning("Could not renew the marker of canvas %s", canvas_id, exc_info=True)


def report_ended(
    state: JobtasticState,
    canvas_id: str,
    part_id: str,
    part_state: str,
    *,
    result: Any = None,
    error: BaseException | None = None,
) -> None:
    """A part succeeded, failed or was revoked: move the canvas on, or end it."""
    sums = _report(state, canvas_id, part_id, part_state, 1.0, 0.0, write=False)
    if sums is None:
        return
    record = canvas_store.read_record(state.celery.backend, canvas_id)
    if record is None:
        return
    try:
        _advance(state, record, sums, part_id, part_state, result, error)
    except Exception:
        logger.exception("Canvas %s could not move on after part %s", canvas_id, part_id)


def report_stopped(state: JobtasticState, canvas_id: str, part_id: str, found_final: bool) -> None:
    """A part stopped mid-run: cancelled, or its state was final already (a worker
    that marked it revoked, a reader that found its worker lost): counted as that."""
    if not found_final:
        report_ended(state, canvas_id, part_id, "revoked")
        return
    meta = results.read_job(state.celery.backend, part_id).meta
    if meta.get("status") == states.REVOKED:
        report_ended(state, canvas_id, part_id, "revoked")
        return
    error = meta.get("result")
    report_ended(
        state,
        canvas_id,
        part_id,
        "failed",
        error=error if isinstance(error, BaseException) else None,
    )


def _report(
    state: JobtasticState,
    canvas_id: str,
    part_id: str,
    part_state: str,
    fraction: float,
    total: float,
    *,
    write: bool = True,
    alive_for: int = 0,
) -> dict[str, Any] | None:
    backend = state.celery.backend
    try:
        sums = canvas_store.report(
            backend, canvas_id, part_id, part_state, fraction, total, alive_for
        )
        if sums is not None and write:
            _write_progress(state, canvas_id, sums)
        return sums
    except Exception:
        logger.warning("Could not report part %s of canvas %s", part_id, canvas_id, exc_info=True)
        return None


#: What a part's progress write needs of its canvas (size, weighting, tracked),
#: which never changes: kept per process, so a report is two round trips, not three.
_shapes: dict[str, tuple[int, str, bool]] = {}
_MAX_SHAPES = 512


def _shape_of(
    state: JobtasticState, canvas_id: str, record: dict[str, Any] | None
) -> tuple[int, str, bool] | None:
    shape = _shapes.get(canvas_id)
    if shape is not None:
        return shape
    record = record or canvas_store.read_record(state.celery.backend, canvas_id)
    if record is None:
        return None
    plan = Plan.from_record(record["plan"])
    if len(_shapes) >= _MAX_SHAPES:
        _shapes.clear()
    shape = _shapes[canvas_id] = (plan.size, plan.weighting, bool(record.get("tracked")))
    return shape


def _write_progress(
    state: JobtasticState,
    canvas_id: str,
    sums: dict[str, Any],
    record: dict[str, Any] | None = None,
) -> None:
    if not canvas_math.has_started(sums):
        return
    shape = _shape_of(state, canvas_id, record)
    if shape is None:
        return
    size, weighting, tracked = shape
    info = canvas_math.progress_info(sums, size, weighting)
    canvas_store.write_progress(state.celery.backend, canvas_id, sums, info)
    if tracked and sums.get("version") == 1:  # the canvas's first report: it runs
        state.record_state(canvas_id, "running", progress=info["progress_percent"])


# -- moving on -------------------------------------------------------------------------


def _advance(
    state: JobtasticState,
    record: dict[str, Any],
    sums: dict[str, Any],
    part_id: str,
    part_state: str,
    result: Any,
    error: BaseException | None,
) -> None:
    plan = Plan.from_record(record["plan"])
    ids: list[str] = record["ids"]
    first_failure = sums.get("first_failure")
    failing = first_failure is not None and not plan.tolerate_failures
    if failing and part_state == "failed" and part_id == first_failure:
        _fail(state, record, part_id, error)
    elif part_state == "revoked" and not sums.get("cancelled"):
        _fail(state, record, part_id, None)  # one part cancelled on its own
    elif failing or sums.get("cancelled"):
        if canvas_math.is_settled(sums):  # the last part to stop: the final counts
            ended = failure_of(state, first_failure) if failing else None
            finish(state, record, states.FAILURE if failing else states.REVOKED, error=ended)
    elif plan.kind == "group":
        if canvas_math.is_settled(sums):
            finish(state, record, states.SUCCESS, result=results_of(state, ids))
        else:
            _write_progress(state, record["id"], sums, record)
    elif plan.kind == "chord" and ids.index(part_id) < len(ids) - 1:
        if int(sums["counts"]["succeeded"]) == len(plan.parts):
            send_next(state, record, len(ids) - 1, (results_of(state, ids[:-1]),))
        else:
            _write_progress(state, record["id"], sums, record)
    elif ids.index(part_id) < len(ids) - 1:  # a chain's stage
        send_next(state, record, ids.index(part_id) + 1, (result,))
    else:  # the chord's body, the chain's last stage
        finish(state, record, states.SUCCESS, result=result)


def send_next(
    state: JobtasticState, record: dict[str, Any], index: int, previous: tuple[Any, ...]
) -> None:
    try:
        send_part(state, record, index, previous)
    except Exception as exc:
        logger.error("Canvas %s could not send its part %d: %s", record["id"], index, exc)
        for part_id in record["ids"][index:]:
            count_revoked(state, record["id"], part_id)
        finish(state, record, states.FAILURE, error=BrokerUnavailable())
        return
    sums = canvas_store.read_sums(state.celery.backend, record["id"])
    if sums is not None:
        _write_progress(state, record["id"], sums, record)


def _fail(
    state: JobtasticState, record: dict[str, Any], part_id: str, error: BaseException | None
) -> None:
    """One part failed (or was cancelled on its own): the canvas fails, the rest stop."""
    if error is None:
        error = TaskRevokedError("a part of this canvas was cancelled")
    finish(state, record, states.FAILURE, error=error, failed_part=part_id)
    stop_parts(state, record, end_if_settled=False)
    finish(state, record, states.FAILURE, error=error)  # the counts once the rest stopped


def new_ids(plan: Plan) -> list[str]:
    return [str(uuid.uuid4()) for _ in plan.all_parts()]
