"""Sending one job: from a call on the class to an ``AsyncResult``.

:func:`dispatch` takes a call through a few named steps: bind it (its
arguments, owner, keys and id, frozen in a :class:`Call`), answer it from the
result cache, claim the herd key or join the run that holds it, record the
job as queued, and send it with the fallback its caller asked for.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from celery import Task
from celery.result import AsyncResult, EagerResult
from kombu.exceptions import EncodeError
from kombu.utils.json import dumps as json_dumps

from . import guards, herd, keys, results, signals, states
from .backend import single_attempt
from .errors import BrokerUnavailable
from .state import require_state

if TYPE_CHECKING:
    from .state import JobtasticState
    from .task import JobtasticTask

logger = logging.getLogger("flask_jobtastic")

#: What a call does when the broker (or the result store) is down.
OnBrokerError = Literal["raise", "eager", "fail"]


@dataclass(frozen=True)
class Call:
    """One call of a job, everything decided before anything is written."""

    task: JobtasticTask
    state: JobtasticState
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    #: Celery's own ``apply_async`` options, ours taken out.
    options: dict[str, Any]
    on_broker_error: OnBrokerError
    #: The id the caller chose (``task_id=``), if any.
    given_id: str | None
    owner: str | None
    tracked: bool
    description: str | None
    #: Where the result's id is cached, owner-scoped where results are private.
    cache_key: str | None
    herd_key: str | None
    #: Tracked for this call only (``track_state=True`` on a class that does not track).
    tracked_by_call: bool = False

    @functools.cached_property
    def task_id(self) -> str:
        """The job's id, made when first needed: a cached answer needs none."""
        return self.given_id or str(uuid.uuid4())

    @property
    def caches(self) -> bool:
        return self.task.cache_duration >= 0


def dispatch(
    task: JobtasticTask,
    args: tuple[Any, ...] | list[Any] | None,
    kwargs: dict[str, Any] | None,
    options: dict[str, Any],
    on_broker_error: OnBrokerError,
) -> AsyncResult[Any]:
    """Cache hit, herd join, or a new message; then the broker fallback."""
    state = require_state(task.app, task.name)
    if state.embedded_worker is not None:
        state.embedded_worker.ensure_started()
    call = bind_call(task, state, args, kwargs, dict(options), on_broker_error)
    answer = answer_from_cache(call) or claim_or_join(call)
    if answer is not None:
        return answer
    job = job_record(call)
    unrecorded = record_queued(call, job)
    record_sent(call)
    return send(call, job is not None, unrecorded)


def bind_call(
    task: JobtasticTask,
    state: JobtasticState,
    args: tuple[Any, ...] | list[Any] | None,
    kwargs: dict[str, Any] | None,
    options: dict[str, Any],
    on_broker_error: OnBrokerError,
) -> Call:
    """Check the arguments fit ``calculate_result`` and decide the keys and the id."""
    args = tuple(args or ())
    kwargs = dict(kwargs or {})
    herd_avoidance = bool(options.pop("herd_avoidance", True))
    track_state = options.pop("track_state", None)
    description = options.pop("description", None)
    tracked = task.track_state if track_state is None else bool(track_state)
    if tracked and state.registry is None:  # before anything is claimed or written
        raise RuntimeError(
            f"{task.name} asks for track_state but the job registry is off: set JOBTASTIC_REGISTRY"
        )
    owner = state.current_owner()
    cache_key = None
    if herd_avoidance or task.cache_duration >= 0:
        cache_key = task.cache_key_for(args, kwargs)
        if owner is not None and not task.share_across_owners:
            # one user's cached result or run in flight is not another's
            cache_key = keys.owner_scoped(cache_key, owner)
    else:  # nothing to look up or claim: only check the arguments fit
        task._bind_arguments(args, kwargs)
    return Call(
        task=task,
        state=state,
        args=args,
        kwargs=kwargs,
        options=options,
        on_broker_error=on_broker_error,
        given_id=options.pop("task_id", None) or None,
        owner=owner,
        tracked=tracked,
        tracked_by_call=bool(track_state) and not task.track_state,
        description=description or task.description,
        cache_key=cache_key,
        herd_key=keys.herd_key(cache_key) if herd_avoidance and cache_key else None,
    )


def answer_from_cache(call: Call) -> AsyncResult[Any] | None:
    """The result of an identical call, when one is cached."""
    if not call.caches or call.cache_key is None:
        return None
    cached_id = herd.cache_get(call.state.cache_backend, keys.result_key(call.cache_key))
    if not cached_id:
        return None
    signals.cache_hit.send(call.task, task_id=cached_id)
    return call.task.AsyncResult(cached_id)


def claim_or_join(call: Call) -> AsyncResult[Any] | None:
    """Claim the herd key for this call, or join the run that holds it."""
    if call.herd_key is None:
        return None
    task, cache = call.task, call.state.cache_backend
    timeout = int(task.herd_avoidance_timeout or 0)
    winner, won = herd.claim_herd_key(cache, call.herd_key, call.task_id, timeout)
    if not won and _has_failed(task, winner):
        # failed, revoked or lost before it released its key: claim afresh
        herd.cache_delete_if_equal(cache, call.herd_key, winner)
        winner, won = herd.claim_herd_key(cache, call.herd_key, call.task_id, timeout)
    if not won:  # a run in flight, or one that just succeeded: share it
        if task.share_across_owners and call.owner is not None:
            _join_owner(task, winner, call.owner)
        signals.herd_joined.send(task, task_id=winner)
        return task.AsyncResult(winner)
    if not call.caches or call.cache_key is None:
        return None
    # The previous run may have cached its result and released its key
    # between our cache read and our claim: use that result.
    cached_id = herd.cache_get(cache, keys.result_key(call.cache_key))
    if not cached_id:
        return None
    _mirror_result(task, cached_id, call.task_id)
    herd.cache_delete_if_equal(cache, call.herd_key, call.task_id)
    signals.cache_hit.send(task, task_id=cached_id)
    return task.AsyncResult(cached_id)


def job_record(call: Call) -> dict[str, Any] | None:
    """The job's side record: who may read it and the key a cancel frees.

    Where owners are checked, a job without this record is nobody's to
    read; a job with no owner, sharing or herd key needs none.
    """
    task = call.task
    needed = call.owner is not None or task.share_across_owners or call.herd_key
    if not needed and not call.state.owners_enforced:
        return None
    return {
        "owner": call.owner,
        "shared": bool(task.share_across_owners),
        "herd_key": call.herd_key,
        "name": task.name,
    }


def record_queued(call: Call, job: dict[str, Any] | None) -> Exception | None:
    """Store PENDING with the job record; the error when the store is down.

    A job sent without it could never be read by its owner: it is not sent.
    """
    try:
        results.record_queued(call.task.backend, call.task_id, {}, job=job)
    except Exception as exc:
        return exc
    return None


def record_sent(call: Call) -> None:
    """The registry's "queued" record of a tracked job."""
    if not call.tracked:
        return
    state = call.state
    state.record_sent(call.task_id, call.task.name, owner=call.owner, description=call.description)


def message_headers(call: Call, has_record: bool) -> dict[str, Any]:
    """What the worker needs to know beyond the arguments."""
    headers: dict[str, Any] = call.options.setdefault("headers", {})
    if call.tracked_by_call:
        headers["jobtastic_track"] = True
    headers["jobtastic_sent_at"] = time.time()  # see running.CHECK_CANCEL_AFTER
    if has_record:
        headers["jobtastic_record"] = True  # the worker extends it as the job ends
    if call.cache_key is not None:
        headers["jobtastic_key"] = call.cache_key  # the worker caches and releases under it
    if call.herd_key is None:  # the worker then has no herd key to release
        headers["jobtastic_herd"] = False
    return headers


def send(call: Call, has_record: bool, unrecorded: Exception | None) -> AsyncResult[Any]:
    """Publish the message; on an outage, the fallback the caller asked for."""
    task = call.task
    headers = message_headers(call, has_record)
    call.options.setdefault("retry_policy", call.state.publish_retry_policy)
    try:
        if unrecorded is not None:
            raise unrecorded
        result: AsyncResult[Any] = Task.apply_async(
            task, call.args, call.kwargs, task_id=call.task_id, **call.options
        )
    except EncodeError as exc:
        _release_claim(call)
        raise _refuse_unsendable(call, exc) from None
    except Exception as exc:
        _release_claim(call)
        if exc is not unrecorded and not is_outage(exc, call.state.broker_errors, task.backend):
            raise
        return _on_outage(call, exc, headers, unrecorded)
    signals.job_sent.send(task, task_id=call.task_id)
    return result


def _release_claim(call: Call) -> None:
    if call.herd_key:
        herd.cache_delete_if_equal(call.state.cache_backend, call.herd_key, call.task_id)


def _refuse_unsendable(call: Call, exc: EncodeError) -> TypeError:
    """The error of arguments JSON cannot carry; those who joined the id see it too."""
    task = call.task
    error = TypeError(
        f"{task.name} was called with {unsendable(call.args, call.kwargs)} that cannot be "
        f"sent as JSON ({exc}); pass strings, numbers, booleans, None, or lists and dicts "
        "of them"
    )
    with contextlib.suppress(Exception), single_attempt(task.backend):
        task.backend.mark_as_failure(call.task_id, error)
    return error


def _on_outage(
    call: Call, exc: Exception, headers: dict[str, Any], unrecorded: Exception | None
) -> AsyncResult[Any]:
    """The broker, or the result store, is down: log, signal, then fall back."""
    task = call.task
    where = "Result backend" if exc is unrecorded else "Broker"
    logger.error(
        "%s unavailable, %s not queued (%s): %s", where, task.name, call.on_broker_error, exc
    )
    signals.broker_unavailable.send(task, task_id=call.task_id, error=exc)
    if call.on_broker_error == "eager":
        return run_here(call, headers, unrecorded)
    if call.tracked:  # not "queued" in the job list for days: it never will run
        call.state.record_state(call.task_id, "failed")
    if call.on_broker_error == "fail":
        return failed_to_queue(task, call.task_id)
    raise exc


def run_here(call: Call, headers: dict[str, Any], unrecorded: Exception | None) -> EagerResult[Any]:
    """The broker fallback of ``delay_or_eager``: run the job in this process now.

    With the result store down (``unrecorded``) the result is not stored,
    and not cached either: a cached id must lead to a readable result.
    """
    task = call.task
    if unrecorded is None:
        with single_attempt(task.backend):
            return task.apply(call.args, call.kwargs, task_id=call.task_id, headers=headers)
    result = task.apply(
        call.args, call.kwargs, task_id=call.task_id, headers=headers, ignore_result=True
    )
    if call.cache_key is not None and call.caches:
        result_key = keys.result_key(call.cache_key)
        herd.cache_delete_if_equal(call.state.cache_backend, result_key, call.task_id)
    return result


def failed_to_queue(task: JobtasticTask, task_id: str) -> AsyncResult[Any]:
    """A result in FAILURE whose status says the job could not be queued.

    Stored in one attempt: when the result store is down too, waiting out
    Celery's retries would hang the request; the failure is then kept in
    memory only.
    """
    error = BrokerUnavailable()
    try:
        with single_attempt(task.backend):
            task.backend.mark_as_failure(task_id, error)
    except Exception:
        logger.warning(
            "Result backend unavailable too; job %s failure kept in memory",
            task_id,
            exc_info=True,
        )
        return EagerResult(task_id, error, states.FAILURE, name=task.name)
    return task.AsyncResult(task_id)


def _join_owner(task: JobtasticTask, task_id: str, owner: str) -> None:
    """Count ``owner`` among those waiting on a shared run (see ``lifecycle.request_cancel``)."""

    def join(job: dict[str, Any]) -> None:
        owners = job.get("owners") or ([job["owner"]] if job.get("owner") else [])
        if owner not in owners:
            owners.append(owner)
        job["owners"] = owners
        detached = job.get("detached") or []
        if owner in detached:  # asked again after cancelling: waiting again
            detached.remove(owner)
            job["detached"] = detached

    try:
        guards.update_job(task.backend, task_id, join)
    except Exception:
        logger.warning("Could not record %s joining job %s", owner, task_id, exc_info=True)


def _has_failed(task: JobtasticTask, task_id: str) -> bool:
    """Whether a herd winner ended without a result (asked on the join path only)."""
    try:
        meta = task.backend.get_task_meta(task_id)
    except Exception:
        return False
    return meta.get("status") in (states.FAILURE, states.REVOKED)


def _mirror_result(task: JobtasticTask, cached_id: str, claimed_id: str) -> None:
    """Give a claimed-but-unsent id the cached result, for callers who joined it.

    Rare: only when a claim races the previous run's release.
    """
    try:
        meta = task.backend.get_task_meta(cached_id)
        if meta.get("status") == states.SUCCESS:
            task.backend.store_result(claimed_id, meta.get("result"), states.SUCCESS)
    except Exception:
        logger.warning("Could not mirror job %s onto %s", cached_id, claimed_id, exc_info=True)


def is_outage(
    exc: BaseException, broker_errors: tuple[type[BaseException], ...], backend: Any
) -> bool:
    """Whether a send failed because the broker, or the result store jobs need, is down.

    Celery's own Redis result consumer gives up reconnecting with a RuntimeError
    caused by a connection error (the extension's backend does not, but a
    Celery app configured with its own backend class may).
    """
    outages = broker_errors + tuple(getattr(backend, "connection_errors", ()) or ())
    if isinstance(exc, outages):
        return True
    return isinstance(exc, RuntimeError) and isinstance(exc.__cause__, outages)


def unsendable(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Name the first argument JSON cannot carry, for the error message."""
    for index, value in enumerate(args):
        try:
            json_dumps(value)
        except (TypeError, ValueError):
            return f"positional argument {index} ({type(value).__name__})"
    for name, value in kwargs.items():
        try:
            json_dumps(value)
        except (TypeError, ValueError):
            return f"argument {name!r} ({type(value).__name__})"
    return "arguments"
