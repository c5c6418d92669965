"""Conditional writes of a running job, and the cancel request they honour.

A job's own writes (progress, the heartbeat's marker) and a reader's "worker
lost" verdict race each other. On Redis each is one script, so the check and
the write are atomic: a job never writes over a final state, and learns in
the same round trip that it was cancelled or declared lost. Other key-value
backends read, then write.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from celery import states as celery_states
from celery.backends.base import BaseKeyValueStoreBackend as KeyValueStoreBackend

from .results import (
    is_redis_backend,
    job_record_ttl,
    meta_ttl,
    read_job,
    task_meta,
    write_progress,
)
from .side_records import (
    alive_marker,
    dumps_record,
    loads_record,
    side_key,
    write_side,
)

#: What a job's write (or check) found: go on, stop because the job was
#: cancelled, or stop because its state is already final (declared lost).
#: A job found REVOKED was cancelled too: Celery's revoke broadcast reaches
#: every worker, and one that does not hold the job stores REVOKED for it
#: while it still reads PENDING; the job then cleans up as for any cancel.
GO_ON, CANCELLED, FINAL = "ok", "cancel", "final"

#: The job-record field that tells the running job to stop.
CANCEL_FIELD = "cancel_requested_at"

_STATUS_OF = """
local function final(raw)
  if not raw then return false end
  local st = string.match(raw, '"status":%s*"(%u+)"')
  return st == 'SUCCESS' or st == 'FAILURE' or st == 'REVOKED'
end
local function revoked(raw)
  return string.match(raw, '"status":%s*"(%u+)"') == 'REVOKED'
end
local function cancelled(raw)
  return raw and string.find(raw, '"cancel_requested_at":', 1, true) ~= nil
end
"""

#: KEYS: meta, job, run. ARGV: meta ttl (0: none), marker ('' for none),
#: marker ttl, force ('1': a redelivered run may replace a final state), metas...
_PROGRESS_SCRIPT = (
    _STATUS_OF
    + """
local meta = redis.call('GET', KEYS[1])
if ARGV[4] ~= '1' and final(meta) then
  if revoked(meta) then return 'cancel' end
  return 'final'
end
if cancelled(redis.call('GET', KEYS[2])) then return 'cancel' end
if ARGV[2] ~= '' then redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[3]) end
for i = 5, #ARGV do
  if ARGV[1] ~= '0' then
    redis.call('SET', KEYS[1], ARGV[i], 'EX', ARGV[1])
  else
    redis.call('SET', KEYS[1], ARGV[i])
  end
  redis.call('PUBLISH', KEYS[1], ARGV[i])
end
return 'ok'
"""
)

#: KEYS: meta, job, run. ARGV: marker ('' to only check), marker ttl.
_CHECK_SCRIPT = (
    _STATUS_OF
    + """
local meta = redis.call('GET', KEYS[1])
if final(meta) then
  if revoked(meta) then return 'cancel' end
  return 'final'
end
if ARGV[1] ~= '' then redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[2]) end
if cancelled(redis.call('GET', KEYS[2])) then return 'cancel' end
return 'ok'
"""
)

#: KEYS: meta, run. ARGV: the FAILURE meta, its ttl (0: none).
_LOST_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local raw = redis.call('GET', KEYS[1])
if not raw or string.match(raw, '"status":%s*"(%u+)"') ~= 'PROGRESS' then return 0 end
if ARGV[2] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


#: Registered scripts per redis-py client (each caches its SHA and reloads it).
_scripts: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _script(backend: Any, source: str) -> Any:
    """The script ``source`` registered with the backend's client, once per client."""
    client = backend.client
    cache = _scripts.setdefault(client, {})
    script = cache.get(source)
    if script is None:
        script = cache[source] = client.register_script(source)
    return script


def _verdict(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _job_asks_cancel(job: dict[str, Any] | None) -> bool:
    return bool(job and job.get(CANCEL_FIELD))


def _is_final(meta: dict[str, Any] | None) -> bool:
    return meta is not None and meta.get("status") in celery_states.READY_STATES


def guarded_progress(
    backend: Any,
    task_id: str,
    *infos: dict[str, Any],
    alive_for: int | None = None,
    force: bool = False,
) -> str | None:
    """``write_progress`` that never lands on a final state or a cancelled job.

    Returns ``GO_ON`` (written), ``CANCELLED`` or ``FINAL`` (nothing
    written), or None on backends that are not key-value stores (the caller
    then writes through Celery). ``force``: a redelivered run replaces the
    verdict a reader gave its lost predecessor.
    """
    if not isinstance(backend, KeyValueStoreBackend):
        return None
    if not is_redis_backend(backend):
        verdict = check_run(backend, task_id, force=force)
        if verdict == GO_ON:
            write_progress(backend, task_id, *infos, alive_for=alive_for)
        return verdict
    marker = alive_marker() if alive_for is not None else ""
    metas = [backend.encode(task_meta(task_id, "PROGRESS", info)) for info in infos]
    keys = [backend.get_key_for_task(task_id), side_key("job", task_id), side_key("run", task_id)]
    args = [meta_ttl(backend), marker, alive_for or 0, "1" if force else "0", *metas]
    return _verdict(_script(backend, _PROGRESS_SCRIPT)(keys=keys, args=args))


def check_run(
    backend: Any, task_id: str, *, alive_for: int | None = None, force: bool = False
) -> str:
    """Whether a running job may go on; with ``alive_for``, renew its marker too."""
    if is_redis_backend(backend):
        keys = [
            backend.get_key_for_task(task_id),
            side_key("job", task_id),
            side_key("run", task_id),
        ]
        marker = alive_marker() if alive_for is not None else ""
        args = [marker, alive_for or 0]
        return _verdict(_script(backend, _CHECK_SCRIPT)(keys=keys, args=args))
    view = read_job(backend, task_id)
    if not force and _is_final(view.meta if "task_id" in view.meta else None):
        return CANCELLED if view.meta.get("status") == celery_states.REVOKED else FINAL
    if alive_for is not None:
        write_side(backend, "run", task_id, alive_marker(), alive_for)
    return CANCELLED if _job_asks_cancel(view.job) else GO_ON


def settle_lost(backend: Any, task_id: str, failure_meta: dict[str, Any]) -> bool:
    """Store a lost worker's job as FAILURE, unless its heartbeat came back.

    Called by the reader that found PROGRESS without the alive marker, so
    that the FAILURE it shows is final: the job, if it was alive after all,
    sees the final state at its next write and stops without overwriting it.
    """
    if not is_redis_backend(backend):
        return False
    keys = [backend.get_key_for_task(task_id), side_key("run", task_id)]
    args = [backend.encode(failure_meta), meta_ttl(backend)]
    return bool(_script(backend, _LOST_SCRIPT)(keys=keys, args=args))


def update_job(
    backend: Any, task_id: str, change: Callable[[dict[str, Any]], Any]
) -> tuple[dict[str, Any], Any]:
    """Read-modify-write the ``job`` side record, atomically on Redis.

    ``change`` edits the record in place and returns a value handed back
    with the stored record. Two owners cancelling one shared run at once
    must not both believe the other still waits.
    """
    key = side_key("job", task_id)
    if not is_redis_backend(backend):
        job = loads_record(backend.get(key)) or {}
        outcome = change(job)
        backend.set(key, dumps_record(job))
        return job, outcome
    client = backend.client
    ttl = job_record_ttl(backend)
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(key)
                job = loads_record(pipe.get(key)) or {}
                outcome = change(job)
                pipe.multi()
                if ttl:
                    pipe.set(key, dumps_record(job), ex=ttl)
                else:
                    pipe.set(key, dumps_record(job))
                pipe.execute()
                return job, outcome
            except _watch_error():
                continue


def _watch_error() -> type[Exception]:
    from redis.exceptions import WatchError

    return WatchError


def extend_job_record(backend: Any, task_id: str) -> None:
    """Restart the job record's clock as the job ends, when Celery's final
    write restarts the meta's: the owner check must outlive what it guards.
    (``JobtasticRedisBackend`` does it within that final write.)"""
    if is_redis_backend(backend) and not getattr(backend, "extends_job_record", False):
        ttl = job_record_ttl(backend)
        if ttl:
            backend.client.expire(side_key("job", task_id), ttl)


_REPUBLISH_SCRIPT = """
local raw = redis.call('GET', KEYS[1])
if raw then redis.call('PUBLISH', KEYS[1], raw) end
return 1
"""


def republish(backend: Any, task_id: str) -> None:
    """Publish the stored meta again, as it is, so open event streams re-read
    the job (a cancel changed what they show, not the meta). Celery's own
    result consumers see a state they already had."""
    if is_redis_backend(backend):
        _script(backend, _REPUBLISH_SCRIPT)(keys=[backend.get_key_for_task(task_id)])
