"""Where a canvas lives in the result backend, and the atomic writes that keep it.

A canvas has the records a job has (Celery's meta under its id, the ``job``
side record with its owner) and three of its own:

- ``canvas``: its plan and the ids of its parts, written once as it starts;
- ``sums``: the running sums ``canvas_math`` reads, one JSON object;
- ``parts``: a hash with each part's last ``state|fraction|total``.

A part that reports updates its entry and the sums in one script, then
writes the canvas's PROGRESS meta only if no later report got there first;
a reader of the canvas reads its meta like any job's: one round trip, however
many parts. Only Redis can do this atomically: canvases need a Redis result
backend.
"""

from __future__ import annotations

import json
import time
from typing import Any

from . import canvas_math
from .guards import _STATUS_OF, CANCEL_FIELD, _script
from .results import (
    is_redis_backend,
    job_record_ttl,
    meta_ttl,
    task_meta,
)
from .side_records import (
    alive_marker,
    dumps_record,
    side_key,
)

#: KEYS: sums, parts, the canvas's run record, its meta. ARGV: part id, its new state,
#: fraction, total, now, the alive marker and its ttl (a running part keeps the
#: canvas's marker as its heartbeat keeps its own).
#: Returns the new sums (or the unchanged ones when the part had already ended).
_REPORT_SCRIPT = (
    _STATUS_OF
    + """
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local sums = cjson.decode(raw)
local old = redis.call('HGET', KEYS[2], ARGV[1])
local ostate, ofrac, ototal = 'pending', 0, 0
if old then
  local a, b, c = string.match(old, '^(%a+)|([^|]*)|([^|]*)$')
  ostate, ofrac, ototal = a, tonumber(b) or 0, tonumber(c) or 0
end
if ostate == 'succeeded' or ostate == 'failed' or ostate == 'revoked' then return raw end
if ARGV[2] == 'running' and not final(redis.call('GET', KEYS[4])) then
  redis.call('SET', KEYS[3], ARGV[6], 'EX', ARGV[7])
end
local nstate, nfrac, ntotal = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if ntotal == 0 then ntotal = ototal end
if nstate == 'succeeded' or nstate == 'failed' then nfrac = 1 end
if nstate == 'revoked' then nfrac = ofrac end
if ototal > 0 then
  sums.known = sums.known - 1
  sums.units = sums.units - ototal
  sums.units_done = sums.units_done - ofrac * ototal
else
  sums.unknown_done = sums.unknown_done - ofrac
end
if ntotal > 0 then
  sums.known = sums.known + 1
  sums.units = sums.units + ntotal
  sums.units_done = sums.units_done + nfrac * ntotal
else
  sums.unknown_done = sums.unknown_done + nfrac
end
sums.fraction_sum = sums.fraction_sum - ofrac + nfrac
sums.counts[ostate] = sums.counts[ostate] - 1
sums.counts[nstate] = sums.counts[nstate] + 1
if sums.started_at == cjson.null then sums.started_at = tonumber(ARGV[5]) end
if nstate == 'failed' and sums.first_failure == cjson.null then sums.first_failure = ARGV[1] end
sums.version = sums.version + 1
raw = cjson.encode(sums)
redis.call('SET', KEYS[1], raw, 'KEEPTTL')
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. '|' .. nfrac .. '|' .. ntotal)
local ttl = redis.call('TTL', KEYS[1])
if ttl > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
return raw
"""
)

#: KEYS: meta, sums. ARGV: the version the meta was computed from, the meta, its ttl.
#: The bar never goes back: a part that reports its total late can lower the
#: weighted sum (it weighed the mean until then), so the percent shown holds
#: until the work catches up with it.
_PROGRESS_SCRIPT = (
    _STATUS_OF
    + """
local current = redis.call('GET', KEYS[1])
if final(current) then return 0 end
local sums = redis.call('GET', KEYS[2])
if sums then
  local version = tonumber(string.match(sums, '"version":(%d+)'))
  if version and version > tonumber(ARGV[1]) then return 0 end
end
local meta = ARGV[2]
local pattern = '"progress_percent":%s*([%d%.]+)'
if current and string.find(current, '"status":%s*"PROGRESS"') then
  local shown = tonumber(string.match(current, pattern))
  local now = tonumber(string.match(meta, pattern))
  if shown and now and shown > now then
    meta = string.gsub(meta, pattern, '"progress_percent": ' .. string.format('%.1f', shown), 1)
  end
end
if ARGV[3] ~= '0' then
  redis.call('SET', KEYS[1], meta, 'EX', ARGV[3])
else
  redis.call('SET', KEYS[1], meta)
end
redis.call('PUBLISH', KEYS[1], meta)
return 1
"""
)

#: KEYS: meta, run. ARGV: the final meta, its ttl, the detail record.
#: The detail (the parts' counts) is written even when the state already is
#: final: parts asked to stop as the canvas failed are counted as they stop.
_FINAL_SCRIPT = (
    _STATUS_OF
    + """
local ended = final(redis.call('GET', KEYS[1]))
if ARGV[2] ~= '0' then
  redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[2])
  if not ended then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
else
  redis.call('SET', KEYS[2], ARGV[3])
  if not ended then redis.call('SET', KEYS[1], ARGV[1]) end
end
if ended then return 0 end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""
)

#: KEYS: sums, then the job records of the parts to stop. ARGV: now.
_CANCEL_SCRIPT = (
    """
local raw = redis.call('GET', KEYS[1])
if raw then
  local sums = cjson.decode(raw)
  sums.cancelled = true
  sums.version = sums.version + 1
  redis.call('SET', KEYS[1], cjson.encode(sums), 'KEEPTTL')
end
for i = 2, #KEYS do
  local job = redis.call('GET', KEYS[i])
  if job then
    local record = cjson.decode(job)
    record['"""
    + CANCEL_FIELD
    + """'] = tonumber(ARGV[1])
    redis.call('SET', KEYS[i], cjson.encode(record), 'KEEPTTL')
  end
end
return 1
"""
)


def require_redis(backend: Any) -> None:
    if not is_redis_backend(backend):
        raise RuntimeError(
            "groups, chords and chains need a Redis result backend: their parts keep "
            "the canvas's sums there atomically; set CELERY result_backend to redis://"
        )


def write_start(
    backend: Any,
    canvas_id: str,
    record: dict[str, Any],
    job: dict[str, Any],
    part_ids: list[str],
    part_job: dict[str, Any],
    done: set[str],
) -> None:
    """Every record of a starting canvas, in one round trip, before any message.

    ``done``: parts already finished (from the result cache), by id: their
    entries start ``succeeded``.
    """
    ttl, job_ttl = meta_ttl(backend) or None, job_record_ttl(backend) or None
    sums = canvas_math.fresh_sums(len(part_ids))
    for _ in done:
        sums["counts"]["pending"] -= 1
        sums["counts"]["succeeded"] += 1
        sums["unknown_done"] += 1.0
        sums["fraction_sum"] += 1.0
    if done:
        sums["started_at"] = time.time()
    now = time.time()
    with backend.client.pipeline(transaction=False) as pipe:
        pipe.set(side_key("canvas", canvas_id), dumps_record(record), ex=ttl)
        pipe.set(side_key("sums", canvas_id), dumps_record(sums), ex=ttl)
        parts_key = side_key("parts", canvas_id)
        if done:
            pipe.hset(parts_key, mapping=dict.fromkeys(done, "succeeded|1|0"))
            if ttl:
                pipe.expire(parts_key, ttl)
        if done:  # parts found in the cache: the canvas is under way
            weighting = "stages" if record["plan"]["kind"] == "chain" else "units"
            info = canvas_math.progress_info(sums, len(part_ids), weighting)
            meta = task_meta(canvas_id, "PROGRESS", info)
        else:
            children = canvas_math.children_counts(sums, len(part_ids))
            meta = task_meta(canvas_id, "PENDING", {"queued_at": now, "children": children})
        pipe.set(backend.get_key_for_task(canvas_id), backend.encode(meta), ex=ttl)
        pipe.set(side_key("job", canvas_id), dumps_record(job), ex=job_ttl)
        for part_id in part_ids:
            if part_id in done:
                continue
            queued = task_meta(part_id, "PENDING", {"queued_at": now})
            pipe.set(backend.get_key_for_task(part_id), backend.encode(queued), ex=ttl)
            pipe.set(side_key("job", part_id), dumps_record(part_job), ex=job_ttl)
        pipe.execute()


def report(
    backend: Any,
    canvas_id: str,
    part_id: str,
    state: str,
    fraction: float,
    total: float,
    alive_for: int = 0,
) -> dict[str, Any] | None:
    """Record one part's state and progress; the canvas's sums after it (None: no canvas).

    A running part's report (``alive_for`` seconds) renews the canvas's alive marker.
    """
    keys = [
        side_key("sums", canvas_id),
        side_key("parts", canvas_id),
        side_key("run", canvas_id),
        backend.get_key_for_task(canvas_id),
    ]
    args = [
        part_id,
        state,
        repr(float(fraction)),
        repr(float(max(total, 0))),
        repr(time.time()),
        alive_marker(),
        max(int(alive_for), 1),
    ]
    raw = _script(backend, _REPORT_SCRIPT)(keys=keys, args=args)
    if not raw:
        return None
    sums: dict[str, Any] = json.loads(raw)
    return sums


def write_progress(
    backend: Any, canvas_id: str, sums: dict[str, Any], info: dict[str, Any]
) -> None:
    """The canvas's PROGRESS meta, unless a later report or a final state got there first."""
    meta = backend.encode(task_meta(canvas_id, "PROGRESS", info))
    keys = [backend.get_key_for_task(canvas_id), side_key("sums", canvas_id)]
    args = [int(sums.get("version") or 0), meta, meta_ttl(backend)]
    _script(backend, _PROGRESS_SCRIPT)(keys=keys, args=args)


def write_final(backend: Any, canvas_id: str, meta: dict[str, Any], detail: dict[str, Any]) -> bool:
    """The canvas's final meta (and the counts it ended with); False if it already had one."""
    keys = [backend.get_key_for_task(canvas_id), side_key("run", canvas_id)]
    args = [backend.encode(meta), meta_ttl(backend), dumps_record(detail)]
    return bool(_script(backend, _FINAL_SCRIPT)(keys=keys, args=args))


def mark_cancelled(backend: Any, canvas_id: str, part_ids: list[str]) -> None:
    """Ask every listed part to stop, and the canvas to send nothing more, at once."""
    keys = [side_key("sums", canvas_id), *(side_key("job", pid) for pid in part_ids)]
    _script(backend, _CANCEL_SCRIPT)(keys=keys, args=[time.time()])


def read_record(backend: Any, canvas_id: str) -> dict[str, Any] | None:
    """The canvas record (plan, part ids, owner, options); None for a job id."""
    raw = backend.client.get(side_key("canvas", canvas_id))
    if not raw:
        return None
    record: dict[str, Any] = json.loads(raw)
    return record


#: KEYS: the canvas's run record, its meta. ARGV: the alive marker, its ttl.
_RENEW_SCRIPT = (
    _STATUS_OF
    + """
if final(redis.call('GET', KEYS[2])) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""
)


def renew_marker(backend: Any, canvas_id: str, alive_for: int) -> None:
    """A running part's heartbeat keeps its canvas's alive marker too (not once it ended:
    the run record then holds the counts it ended with)."""
    keys = [side_key("run", canvas_id), backend.get_key_for_task(canvas_id)]
    _script(backend, _RENEW_SCRIPT)(keys=keys, args=[alive_marker(), max(int(alive_for), 1)])


def rewrite_record(backend: Any, canvas_id: str, record: dict[str, Any]) -> None:
    backend.client.set(side_key("canvas", canvas_id), dumps_record(record), keepttl=True)


def read_sums(backend: Any, canvas_id: str) -> dict[str, Any] | None:
    raw = backend.client.get(side_key("sums", canvas_id))
    return json.loads(raw) if raw else None


def read_part_states(backend: Any, canvas_id: str, part_ids: list[str]) -> list[str]:
    """Each listed part's state as the canvas counted it (``pending`` if never reported)."""
    if not part_ids:
        return []
    values = backend.client.hmget(side_key("parts", canvas_id), part_ids)
    states = []
    for value in values:
        text = value.decode() if isinstance(value, bytes) else value
        states.append(text.split("|", 1)[0] if text else "pending")
    return states
