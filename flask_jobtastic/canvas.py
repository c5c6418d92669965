"""Groups, chords and chains of ``JobtasticTask`` signatures, started as one job.

``canvas_or_fail(group(...))`` gives one id. Its status document, event
stream, registry entry and cancel are those of a job; its progress is its
parts' progress, weighted by what each part reports (see ``canvas_math``).
The parts are ordinary jobs sent through the broker; which part to send next
and when the canvas ends is decided as each part reports (``canvas_flow``).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Literal

from celery.result import AsyncResult, EagerResult
from flask import current_app

from . import canvas_flow, canvas_math, canvas_store, herd, keys, results, side_records, states
from .backend import single_attempt
from .canvas_ending import finish, results_of, stop_parts
from .canvas_plan import CanvasError, Plan, plan_of
from .errors import BrokerUnavailable
from .reading import viewer_document
from .sending import is_outage, unsendable
from .state import JobtasticState
from .status import build_status
from .task import JobtasticTask

__all__ = ["CanvasError", "canvas_or_eager", "canvas_or_fail", "start_canvas"]

logger = logging.getLogger("flask_jobtastic")

#: How long an identical canvas joins a running one, at least: the longest
#: ``herd_avoidance_timeout`` among its parts is used when longer.
CANVAS_HERD_TIMEOUT = 600


def canvas_or_fail(signature: Any, **options: Any) -> AsyncResult[Any]:
    """Start a group, chord or chain as one job; with the broker down, a FAILURE result."""
    return start_canvas(signature, on_broker_error="fail", **options)


def canvas_or_eager(signature: Any, **options: Any) -> AsyncResult[Any]:
    """Start a group, chord or chain as one job; with the broker down, run it here."""
    return start_canvas(signature, on_broker_error="eager", **options)


def start_canvas(
    signature: Any,
    *,
    on_broker_error: Literal["fail", "eager"] = "fail",
    tolerate_failures: bool = False,
    track_state: bool = False,
    description: str | None = None,
    herd_avoidance: bool = True,
) -> AsyncResult[Any]:
    """Start ``signature`` (a celery ``group``, ``chord`` or ``chain``) as one job.

    Every task in it must be a ``JobtasticTask`` of this app's Celery. Parts
    whose results are cached count as done and are not sent again; an
    identical canvas started while one runs joins it (``herd_avoidance``).
    """
    state: JobtasticState = current_app.extensions["jobtastic"]
    backend = state.celery.backend
    canvas_store.require_redis(backend)
    plan = plan_of(signature, tolerate_failures=tolerate_failures)
    _check_parts(state, plan)
    _check_sendable(plan)
    if track_state and state.registry is None:
        raise RuntimeError("track_state needs the job registry: set JOBTASTIC_REGISTRY")
    owner = state.current_owner()
    ids = canvas_flow.new_ids(plan)
    done = _cached_parts(state, plan, ids, owner)
    canvas_id = str(uuid.uuid4())
    herd_key = _herd_key(state, plan, owner) if herd_avoidance else None
    if herd_key is not None:
        joined = _claim_or_join(state, herd_key, canvas_id, plan)
        if joined is not None:
            return joined
    record, job, part_job = _records(plan, canvas_id, ids, owner, herd_key, track_state)
    try:
        with single_attempt(backend):
            canvas_store.write_start(backend, canvas_id, record, job, ids, part_job, done)
    except Exception as exc:
        logger.error("Result backend unavailable, canvas %s not started: %s", canvas_id, exc)
        _release(state, herd_key, canvas_id)
        return EagerResult(canvas_id, BrokerUnavailable(), states.FAILURE)
    if track_state:
        state.record_sent(canvas_id, job["name"], owner=owner, description=description)
    _send_first(state, record, plan, done, on_broker_error)
    return AsyncResult(canvas_id, app=state.celery)


def _records(
    plan: Plan,
    canvas_id: str,
    ids: list[str],
    owner: Any,
    herd_key: str | None,
    tracked: bool,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The canvas record, the canvas's job record and its parts' job record."""
    record = {
        "id": canvas_id,
        "plan": plan.record(),
        "ids": ids,
        "owner": owner,
        "tracked": bool(tracked),
        "herd_key": herd_key,
        "eager": False,
    }
    name = _name_of(plan)
    job = {"owner": owner, "shared": False, "herd_key": herd_key, "name": name, "kind": plan.kind}
    part_job = {"owner": owner, "shared": False, "herd_key": None, "name": name}
    return record, job, {**part_job, "canvas": canvas_id}


def _check_parts(state: JobtasticState, plan: Plan) -> None:
    """Every part a ``JobtasticTask`` of this app, called with arguments that fit it."""
    for index, part in enumerate(plan.all_parts()):
        task = state.celery.tasks.get(part.task)
        if not isinstance(task, JobtasticTask):
            raise CanvasError(
                f"{part.task} is not a JobtasticTask of this app's Celery: every task of "
                "a canvas must be one (subclass JobtasticTask and import it before starting)"
            )
        takes_previous = not part.immutable and (
            (plan.kind == "chain" and index > 0) or (plan.body is not None and part is plan.body)
        )
        args = (None, *part.args) if takes_previous else part.args
        task._bind_arguments(args, part.kwargs)


def _check_sendable(plan: Plan) -> None:
    """Arguments JSON cannot carry are refused before anything is claimed or written."""
    for part in plan.all_parts():
        try:
            side_records.dumps_record(part.record())
        except (TypeError, ValueError):
            raise TypeError(
                f"{part.task} in this canvas has {unsendable(part.args, part.kwargs)} that "
                "cannot be sent as JSON; pass strings, numbers, booleans, None, or lists "
                "and dicts of them"
            ) from None


def _cached_parts(state: JobtasticState, plan: Plan, ids: list[str], owner: Any) -> set[str]:
    """Parts whose results are cached: their ids become the cached runs' ids."""
    if plan.kind == "chain":
        return set()  # each stage depends on the one before
    found: set[str] = set()
    lookups: list[tuple[int, str]] = []
    for index, part in enumerate(plan.parts):
        cache_key = canvas_flow.part_cache_key(state, part, part.args, owner)
        if cache_key is not None:
            lookups.append((index, cache_key))
    if not lookups:
        return found
    cached = herd.cache_get_many(state.cache_backend, [keys.result_key(key) for _, key in lookups])
    for (index, _), cached_id in zip(lookups, cached, strict=True):
        if isinstance(cached_id, str) and results.is_valid_task_id(cached_id):
            ids[index] = cached_id
            found.add(cached_id)
    return found


def _herd_key(state: JobtasticState, plan: Plan, owner: Any) -> str:
    """Where a canvas of these parts, arguments and options claims its run: a digest."""
    cache_key = keys.build_cache_key("canvas", [("plan", keys.canonical_json(plan.record()))])
    return keys.herd_key(keys.owner_scoped(cache_key, owner) if owner is not None else cache_key)


def _claim_or_join(
    state: JobtasticState, herd_key: str, canvas_id: str, plan: Plan
) -> AsyncResult[Any] | None:
    timeout = max(
        [CANVAS_HERD_TIMEOUT]
        + [
            int(canvas_flow.part_task(state, p.task).herd_avoidance_timeout or 0)
            for p in plan.all_parts()
        ]
    )
    cache = state.cache_backend
    winner, won = herd.claim_herd_key(cache, herd_key, canvas_id, timeout)
    if not won and _has_ended_badly(state, winner):
        herd.cache_delete_if_equal(cache, herd_key, winner)
        winner, won = herd.claim_herd_key(cache, herd_key, canvas_id, timeout)
    if won:
        return None
    return AsyncResult(winner, app=state.celery)


def _has_ended_badly(state: JobtasticState, canvas_id: str) -> bool:
    try:
        meta = state.celery.backend.get_task_meta(canvas_id)
    except Exception:
        return False
    return meta.get("status") in (states.FAILURE, states.REVOKED)


def _release(state: JobtasticState, herd_key: str | None, canvas_id: str) -> None:
    if herd_key:
        herd.cache_delete_if_equal(state.cache_backend, herd_key, canvas_id)


def _name_of(plan: Plan) -> str:
    names = list(dict.fromkeys(part.task.rsplit(".", 1)[-1] for part in plan.all_parts()))
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"{plan.kind} of {plan.size}: {shown}"


def _send_first(
    state: JobtasticState,
    record: dict[str, Any],
    plan: Plan,
    done: set[str],
    on_broker_error: str,
) -> None:
    """Send what can start now: every uncached part of a group or chord header, a
    chain's first stage; a chord whose header is all cached sends its body."""
    ids: list[str] = record["ids"]
    first = (
        [0] if plan.kind == "chain" else [i for i in range(len(plan.parts)) if ids[i] not in done]
    )
    try:
        for index in first:
            canvas_flow.send_part(state, record, index)
    except Exception as exc:
        if not is_outage(exc, state.broker_errors, state.celery.backend):
            raise
        _on_outage(state, record, exc, on_broker_error)
        return
    if not first:
        _all_cached(state, record, plan)


def _on_outage(
    state: JobtasticState, record: dict[str, Any], exc: Exception, on_broker_error: str
) -> None:
    canvas_id = record["id"]
    logger.error(
        "Broker unavailable, canvas %s not queued (%s): %s", canvas_id, on_broker_error, exc
    )
    backend = state.celery.backend
    if on_broker_error == "eager":
        record["eager"] = True
        canvas_store.rewrite_record(backend, canvas_id, record)
        plan = Plan.from_record(record["plan"])
        ids: list[str] = record["ids"]
        part_states = canvas_store.read_part_states(backend, canvas_id, ids)
        first = [0] if plan.kind == "chain" else range(len(plan.parts))
        for index in first:
            if part_states[index] not in canvas_math.FINISHED:
                canvas_flow.send_part(state, record, index)
        return
    finish(state, record, states.FAILURE, error=BrokerUnavailable())
    stop_parts(state, record, end_if_settled=False, broker_down=True)
    finish(state, record, states.FAILURE, error=BrokerUnavailable())  # the counts


def _all_cached(state: JobtasticState, record: dict[str, Any], plan: Plan) -> None:
    """Nothing to send: a group is done; a chord sends its body with the cached results."""
    ids: list[str] = record["ids"]
    if plan.kind == "group":
        finish(state, record, states.SUCCESS, result=results_of(state, ids))
    else:
        header = results_of(state, ids[: len(plan.parts)])
        canvas_flow.send_next(state, record, len(ids) - 1, (header,))


# -- on the web: cancel and the parts' own documents ------------------------------------


def cancel(state: JobtasticState, canvas_id: str) -> bool:
    """Stop every part of a canvas; its document reads REVOKED once they stopped."""
    record = canvas_store.read_record(state.celery.backend, canvas_id)
    if record is None:
        return False
    stop_parts(state, record)
    return True


def part_ids(state: JobtasticState, canvas_id: str) -> list[str] | None:
    """The ids of a canvas's parts in order (a chord's body last); None for a job."""
    record = canvas_store.read_record(state.celery.backend, canvas_id)
    return None if record is None else list(record["ids"])


#: Parts listed per page of ``?children=1``.
PARTS_PER_PAGE = 50


def parts_page(state: JobtasticState, canvas_id: str, page_text: str) -> dict[str, Any]:
    """``parts`` (the documents of one page of parts, in order) and ``parts_page``.

    Each part is owner-checked like any job: one the viewer may not read is
    listed as UNKNOWN.
    """
    try:
        page = int(page_text)
    except ValueError:
        raise ValueError("page must be a whole number from 1") from None
    ids = part_ids(state, canvas_id) or []
    pages = max(1, -(-len(ids) // PARTS_PER_PAGE))
    if not 1 <= page <= pages:
        raise ValueError(f"page must be from 1 to {pages}")
    chosen = ids[(page - 1) * PARTS_PER_PAGE : page * PARTS_PER_PAGE]
    views = results.read_jobs(state.celery.backend, chosen)
    documents = []
    for part_id in chosen:
        view = views[part_id]
        if state.may_read(view.job, has_side_records=view.has_side_records):
            documents.append(viewer_document(state, part_id, view))
        else:
            documents.append(build_status(part_id, None))
    return {
        "parts": documents,
        "parts_page": {"page": page, "pages": pages, "per_page": PARTS_PER_PAGE, "total": len(ids)},
    }
