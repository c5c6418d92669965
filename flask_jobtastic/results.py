"""Reading and writing task meta in Celery's result backend.

The status document is built from what these return; they hide the
difference between key-value backends (Redis, memcached, in-memory), which
allow one round trip for many ids, and the others.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from celery import states as celery_states
from celery.backends.base import BaseKeyValueStoreBackend as KeyValueStoreBackend

from .side_records import (
    ALIVE_FIELD,
    ENDED_FIELD,
    alive_marker,
    dumps_record,
    loads_record,
    side_key,
)
from .status import unreadable_meta

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def is_valid_task_id(task_id: str) -> bool:
    """Task ids are UUIDs; anything else is a malformed request."""
    return bool(_UUID.fullmatch(task_id))


def task_meta(task_id: str, state: str, info: dict[str, Any]) -> dict[str, Any]:
    """Celery's task-meta shape, as ``store_result`` would write it."""
    return {
        "status": state,
        "result": info,
        "traceback": None,
        "children": [],
        "date_done": None,
        "task_id": task_id,
    }


def _write(backend: Any, records: list[tuple[Any, Any, bool, int | None]]) -> None:
    """Write ``(key, value, publish, expires)`` records in one round trip on Redis.

    Celery's ``store_result`` first reads the meta back (to never overwrite a
    SUCCESS); our own writes happen before the job's result exists, so they
    skip that read, and go out as one pipeline.
    """
    from celery.backends.redis import RedisBackend

    if isinstance(backend, RedisBackend):
        default = backend.expires  # type: ignore[attr-defined]  # not in celery-types
        if len(records) == 1 and not records[0][2]:  # one SET: no pipeline to build
            key, value, _publish, expires = records[0]
            ttl = expires if expires is not None else default
            backend.client.set(key, value, ex=int(ttl) if ttl else None)
            return
        with backend.client.pipeline(transaction=False) as pipe:
            for key, value, publish, expires in records:
                ttl = expires if expires is not None else default
                if ttl:
                    pipe.set(key, value, ex=int(ttl))
                else:
                    pipe.set(key, value)
                if publish:
                    pipe.publish(key, value)
            pipe.execute()
        return
    for key, value, _publish, _expires in records:
        backend.set(key, value)


def record_queued(
    backend: Any, task_id: str, info: dict[str, Any], job: dict[str, Any] | None = None
) -> None:
    """Store a PENDING meta (and the ``job`` side record) before the message is sent.

    It lets the status endpoint tell a queued job (PENDING) from an id no one
    has heard of (UNKNOWN), and know the job's owner. Written before
    publishing, so it can never overwrite the worker's first PROGRESS. Not
    published: no one can be listening for an id that was not handed out yet.
    """
    info = {"queued_at": time.time(), **info}
    if not isinstance(backend, KeyValueStoreBackend):
        backend.store_result(task_id, info, celery_states.PENDING)
        return
    records: list[tuple[Any, Any, bool, int | None]] = [
        (
            backend.get_key_for_task(task_id),
            backend.encode(task_meta(task_id, celery_states.PENDING, info)),
            False,
            None,
        )
    ]
    if job is not None:
        # it decides who may read the meta: it must outlive it
        ttl = job_record_ttl(backend) if is_redis_backend(backend) else 0
        records.append((side_key("job", task_id), dumps_record(job), False, ttl or None))
    _write(backend, records)


def write_progress(
    backend: Any, task_id: str, *infos: dict[str, Any], alive_for: int | None = None
) -> bool:
    """Store PROGRESS metas, in order, (and, with ``alive_for``, the alive marker) at once.

    Each meta is published, so an event stream sees every one; the last one
    stays. Returns False on backends that are not key-value stores; the
    caller then uses Celery's ``update_state``.
    """
    if not isinstance(backend, KeyValueStoreBackend):
        return False
    key = backend.get_key_for_task(task_id)
    records: list[tuple[Any, Any, bool, int | None]] = []
    if alive_for is not None:  # first, so no reader sees PROGRESS without it
        records.append((side_key("run", task_id), alive_marker(), False, alive_for))
    records += [
        (key, backend.encode(task_meta(task_id, "PROGRESS", info)), True, None) for info in infos
    ]
    _write(backend, records)
    return True


@dataclass
class JobView:
    """What the stores know about one job: Celery's meta plus our side records."""

    meta: dict[str, Any]
    #: The record written at send time (owner, herd key, task name), if any.
    job: dict[str, Any] | None = None
    #: The run record: the alive marker while the job runs, then its details.
    run: dict[str, Any] | None = None
    #: False when the backend cannot hold side records, so "alive" means nothing.
    has_side_records: bool = False

    @property
    def detail(self) -> dict[str, Any] | None:
        """Steps, messages and counts saved when the job ended."""
        run = self.run
        return None if run is None or ALIVE_FIELD in run else run

    @property
    def is_canvas(self) -> bool:
        """A group, chord or chain started as one job (``canvas.start_canvas``)."""
        return bool(self.job and self.job.get("kind") in ("group", "chord", "chain"))

    @property
    def is_alive(self) -> bool | None:
        """Whether the worker's heartbeat marker exists (or the job just ended and
        Celery is storing its result); None where it cannot be known."""
        if not self.has_side_records:
            return None
        if self.is_canvas and not _parts_running(self.meta):
            return None  # parts waiting for a worker, or between stages: nothing to judge
        run = self.run
        if run is None:
            return False
        if ALIVE_FIELD in run:
            return True
        ended_at, alive_for = run.get(ENDED_FIELD), run.get("alive_for")
        if isinstance(ended_at, int | float) and isinstance(alive_for, int | float):
            # the details are written just before Celery stores the result
            return time.time() - ended_at < alive_for
        return False


def _parts_running(meta: dict[str, Any]) -> bool:
    """Whether a canvas's PROGRESS meta counts parts running: their heartbeats keep
    the canvas's alive marker, so a canvas without one has lost its workers."""
    info = meta.get("result")
    children = info.get("children") if isinstance(info, dict) else None
    running = children.get("running") if isinstance(children, dict) else None
    return isinstance(running, int) and running > 0


def read_job(backend: Any, task_id: str) -> JobView:
    """Meta and side records of one job, in one round trip where possible."""
    return read_jobs(backend, [task_id])[task_id]


def read_jobs(backend: Any, task_ids: Iterable[str]) -> dict[str, JobView]:
    """``read_job`` for many ids, still one round trip on key-value backends."""
    ids = list(dict.fromkeys(task_ids))
    if not ids:
        return {}
    if isinstance(backend, KeyValueStoreBackend):
        meta_key = _meta_key_builder(backend)
        keys: list[Any] = []
        for task_id in ids:
            keys += [meta_key(task_id), side_key("job", task_id), side_key("run", task_id)]
        try:
            values = backend.mget(keys)
        except NotImplementedError:
            values = None
        if values is not None:
            if isinstance(values, dict):
                by_key = {_text(k): v for k, v in values.items()}
                raw = [by_key.get(_text(key)) for key in keys]
            else:
                raw = list(values)
            return _views(backend, ids, raw)
    return {task_id: JobView(backend.get_task_meta(task_id)) for task_id in ids}


def _views(backend: Any, ids: list[str], raw: list[Any]) -> dict[str, JobView]:
    """Decode ``[meta, job, run] * len(ids)`` stored values into views.

    Every record is JSON text, so all of them go through one ``json.loads``
    of their concatenation; a record that is not plain JSON takes the slow
    path on its own.
    """
    decoded = _decode_all(raw)
    views: dict[str, JobView] = {}
    for index, task_id in enumerate(ids):
        at = 3 * index
        meta = decode_meta(backend, task_id, raw[at], None if decoded is None else decoded[at])
        if decoded is None:
            job, run = loads_record(raw[at + 1]), loads_record(raw[at + 2])
        else:
            job, run = _dict_or_none(decoded[at + 1]), _dict_or_none(decoded[at + 2])
        views[task_id] = JobView(meta, job, run, True)
    return views


def decode_meta(backend: Any, task_id: str, raw: Any, decoded: Any = None) -> dict[str, Any]:
    """One job's meta from its stored (or published) text; never raises.

    A corrupt or foreign record (not JSON, not an object, an exception Celery
    cannot rebuild) reads as ``status.unreadable_meta``: one bad record must
    not take a whole batch, or an event stream, down with it.
    """
    try:
        return _stored_meta(backend, raw, decoded)
    except Exception as exc:
        return unreadable_meta(task_id, f"its meta cannot be decoded ({type(exc).__name__})")


def _stored_meta(backend: Any, raw: Any, decoded: Any) -> dict[str, Any]:
    """One job's meta from its stored text (``decoded``: the batch decode, if it worked)."""
    if not raw:
        return {"status": celery_states.PENDING, "result": None}
    if decoded is None or _is_typed(raw) or not isinstance(decoded, dict):
        meta = _decode_meta(backend, raw)
    elif decoded.get("status") in backend.EXCEPTION_STATES:
        meta = backend.meta_from_decoded(decoded)
    else:
        meta = decoded
    if not isinstance(meta, dict):
        raise TypeError(f"a stored meta is a {type(meta).__name__}, not an object")
    return meta


def _decode_all(raw: list[Any]) -> list[Any] | None:
    """All stored values as one JSON array; None when any of them is not JSON text."""
    parts: list[bytes] = []
    for value in raw:
        if not value:
            parts.append(b"null")
        elif isinstance(value, bytes):
            parts.append(value)
        elif isinstance(value, str):
            parts.append(value.encode("utf-8", "surrogatepass"))
        else:
            return None
    try:
        decoded = json.loads(b"[" + b",".join(parts) + b"]")
    except ValueError:
        return None
    return decoded if len(decoded) == len(raw) else None


def _is_typed(raw: Any) -> bool:
    """Whether a stored meta holds kombu's typed values (dates, UUIDs, ...)."""
    marker: Any = b'"__type__"' if isinstance(raw, bytes) else '"__type__"'
    return marker in raw


def _dict_or_none(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _meta_key_builder(backend: Any) -> Callable[[str], Any]:
    """``backend.get_key_for_task``, without Celery's per-call encoding where it is plain."""
    if type(backend).get_key_for_task is KeyValueStoreBackend.get_key_for_task:
        prefix = backend.task_keyprefix
        if isinstance(prefix, bytes):
            encoded = prefix

            def build(task_id: str) -> Any:
                return encoded + task_id.encode()

            return build
        if isinstance(prefix, str):
            return lambda task_id: prefix + task_id
    get_key: Callable[[str], Any] = backend.get_key_for_task
    return get_key


def _decode_meta(backend: Any, raw: Any) -> dict[str, Any]:
    """Decode one stored meta; plain JSON takes the fast path.

    Celery's decoder goes through kombu's registry and type hooks for every
    value; metas without kombu's typed values (the common case) are plain JSON.
    Exceptions are still rebuilt by Celery.
    """
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    if not isinstance(text, str) or not text.startswith("{") or '"__type__"' in text:
        decoded: dict[str, Any] = backend.decode_result(raw)
        return decoded
    meta: dict[str, Any] = json.loads(text)
    if meta.get("status") in backend.EXCEPTION_STATES:
        rebuilt: dict[str, Any] = backend.meta_from_decoded(meta)
        return rebuilt
    return meta


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def is_redis_backend(backend: Any) -> bool:
    from celery.backends.redis import RedisBackend

    return isinstance(backend, RedisBackend)


def meta_ttl(backend: Any) -> int:
    expires = backend.expires
    return int(expires) if expires else 0


#: The job record outlives the meta by this much: it decides who may read
#: the meta, so it must never be the one that expires first.
JOB_RECORD_MARGIN = 3600


def job_record_ttl(backend: Any) -> int:
    """Seconds the owner record lives: the meta's, plus a margin (0: forever)."""
    ttl = meta_ttl(backend)
    return ttl + JOB_RECORD_MARGIN if ttl else 0
