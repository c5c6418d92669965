"""The opt-in task registry: one record per tracked job, shared by web and workers.

A page lists "my jobs" with live progress bars and support agents can look up
what happened to a job, so the record outlives the request that started it.
Two stores behave the same way: :class:`MemoryRegistryStore` for a single
process (tests, development) and :class:`RedisRegistryStore` for real
deployments, where web and worker processes need to see each other's writes.

Compared with the seed library this module never forgets a finished job that
nobody has looked at yet (it waits ``unseen_ttl``, not two minutes) and only
lets a job's owner mark it seen.
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import redis

from flask_jobtastic.errors import JobtasticError
from flask_jobtastic.signals import task_changed

JOB_STATES = ("queued", "running", "succeeded", "failed", "revoked", "retrying")
FINISHED_STATES = frozenset({"succeeded", "failed", "revoked"})

#: Default lifetime of a Redis record, refreshed on every write.
DEFAULT_RECORD_TTL = 7 * 86400

#: How many records cleanup and listing read per round trip.
_BATCH = 200


class JobNotFinished(JobtasticError, ValueError):
    """Only finished jobs can be marked seen: a running one still needs its bar."""


@dataclass
class JobRecord:
    """What the registry knows about one job; plain data so it travels as JSON."""

    id: str
    task_name: str
    owner: str | None
    description: str | None
    state: str
    created_at: float
    updated_at: float
    progress: float = 0.0
    seen: bool = False
    seen_at: float | None = None
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        """True once nothing will change the outcome any more."""
        return self.state in FINISHED_STATES

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, plus ``finished`` so pages need not know the state set."""
        data = dataclasses.asdict(self)
        data["finished"] = self.finished
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobRecord:
        """Rebuild a record from :meth:`to_dict` output, ignoring derived keys."""
        return cls(
            id=str(data["id"]),
            task_name=str(data["task_name"]),
            owner=_opt_str(data.get("owner")),
            description=_opt_str(data.get("description")),
            state=str(data["state"]),
            created_at=float(data["created_at"]),
            updated_at=float(data["updated_at"]),
            progress=float(data.get("progress", 0.0)),
            seen=bool(data.get("seen", False)),
            seen_at=_opt_float(data.get("seen_at")),
            finished_at=_opt_float(data.get("finished_at")),
        )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _newest_first(records: Iterable[JobRecord]) -> list[JobRecord]:
    """One ordering for both stores, ties broken by id as a Redis sorted set does."""
    return sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)


@runtime_checkable
class RegistryStore(Protocol):
    """Where records live; :class:`Registry` holds the behaviour."""

    def save(self, record: JobRecord) -> None:
        """Create or replace the record."""
        ...

    def get(self, job_id: str) -> JobRecord | None: ...

    def get_many(self, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        """Records of the ids that exist, keyed by id; missing ids are left out."""
        ...

    def list_for_owner(
        self, owner: str, *, states: Iterable[str] | None = None, limit: int = 100
    ) -> list[JobRecord]:
        """The owner's records, newest first, optionally only in ``states``."""
        ...

    def delete(self, job_id: str) -> bool: ...

    def all_ids(self) -> Iterator[str]: ...

    def clear(self) -> int: ...


class MemoryRegistryStore:
    """A single-process store: a dict plus a per-owner index, behind a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, JobRecord] = {}
        self._by_owner: dict[str, set[str]] = {}

    def save(self, record: JobRecord) -> None:
        # Store a copy so callers editing their record do not edit ours,
        # just as with Redis.
        stored = dataclasses.replace(record)
        with self._lock:
            old = self._records.get(record.id)
            if old is not None and old.owner is not None and old.owner != record.owner:
                self._unindex(old.owner, record.id)
            self._records[record.id] = stored
            if record.owner is not None:
                self._by_owner.setdefault(record.owner, set()).add(record.id)

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            record = self._records.get(job_id)
        return None if record is None else dataclasses.replace(record)

    def get_many(self, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        with self._lock:
            found = [self._records[i] for i in job_ids if i in self._records]
        return {r.id: dataclasses.replace(r) for r in found}

    def list_for_owner(
        self, owner: str, *, states: Iterable[str] | None = None, limit: int = 100
    ) -> list[JobRecord]:
        wanted = None if states is None else frozenset(states)
        with self._lock:
            ids = self._by_owner.get(owner, set())
            records = [
                self._records[i] for i in ids if wanted is None or self._records[i].state in wanted
            ]
        return [dataclasses.replace(r) for r in _newest_first(records)[: max(limit, 0)]]

    def delete(self, job_id: str) -> bool:
        with self._lock:
            record = self._records.pop(job_id, None)
            if record is None:
                return False
            if record.owner is not None:
                self._unindex(record.owner, job_id)
            return True

    def all_ids(self) -> Iterator[str]:
        with self._lock:
            ids = list(self._records)
        return iter(ids)

    def clear(self) -> int:
        with self._lock:
            count = len(self._records)
            self._records.clear()
            self._by_owner.clear()
        return count

    def _unindex(self, owner: str, job_id: str) -> None:
        """Drop an index entry, and the owner's set once empty so it cannot grow."""
        ids = self._by_owner.get(owner)
        if ids is not None:
            ids.discard(job_id)
            if not ids:
                del self._by_owner[owner]


# Fields left out of the Redis hash stand for None, so "" stays distinct from None.
_OPTIONAL_STR = ("owner", "description")
_OPTIONAL_FLOAT = ("seen_at", "finished_at")


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    """Make a key prefix literal inside a SCAN MATCH pattern."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


class RedisRegistryStore:
    """Records in Redis so web and worker processes share them.

    Each job is a hash and each owner a sorted set of job ids scored by
    creation time. Every write refreshes an expiry on both, so the data stays
    bounded even if :meth:`Registry.cleanup` never runs.
    """

    def __init__(
        self,
        client_or_url: redis.Redis | str,
        *,
        prefix: str = "jobtastic:registry:",
        record_ttl: int = DEFAULT_RECORD_TTL,
    ) -> None:
        if record_ttl <= 0:
            raise ValueError("record_ttl must be a positive number of seconds")
        if isinstance(client_or_url, str):
            client_or_url = redis.Redis.from_url(client_or_url)
        self.client: redis.Redis = client_or_url
        self.prefix = prefix
        self.record_ttl = int(record_ttl)

    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def owner_key(self, owner: str) -> str:
        return f"{self.prefix}owner:{owner}"

    def save(self, record: JobRecord) -> None:
        key = self.job_key(record.id)
        pipe = self.client.pipeline(transaction=True)
        # Replace, not merge: a field that became None must disappear.
        pipe.delete(key)
        pipe.hset(key, mapping=self._encode(record))  # type: ignore[arg-type]  # str: str is fine
        pipe.expire(key, self.record_ttl)
        if record.owner is not None:
            owner_key = self.owner_key(record.owner)
            pipe.zadd(owner_key, {record.id: record.created_at})
            pipe.expire(owner_key, self.record_ttl)
        pipe.execute()

    def get(self, job_id: str) -> JobRecord | None:
        return self._decode(self.client.hgetall(self.job_key(job_id)))

    def get_many(self, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self.job_key(job_id))
        found: dict[str, JobRecord] = {}
        for job_id, raw in zip(ids, pipe.execute(), strict=True):
            record = self._decode(raw)
            if record is not None:
                found[job_id] = record
        return found

    def list_for_owner(
        self, owner: str, *, states: Iterable[str] | None = None, limit: int = 100
    ) -> list[JobRecord]:
        if limit <= 0:
            return []
        wanted = None if states is None else frozenset(states)
        owner_key = self.owner_key(owner)
        result: list[JobRecord] = []
        start = 0
        page = max(limit, _BATCH) if wanted is not None else limit
        while len(result) < limit:
            members = self.client.zrevrange(owner_key, start, start + page - 1)
            ids = [_text(m) for m in members]  # type: ignore[arg-type]  # no scores asked
            if not ids:
                break
            records = self.get_many(ids)
            # Expired hashes, and ids re-saved under another owner, leave
            # stale index entries: trim them so the index tracks the hashes.
            stale = [i for i in ids if i not in records or records[i].owner != owner]
            if stale:
                self.client.zrem(owner_key, *stale)
            for job_id in ids:
                record = records.get(job_id)
                if record is None or record.owner != owner:
                    continue
                if wanted is None or record.state in wanted:
                    result.append(record)
            if len(ids) < page:
                break
            start += page - len(stale)
        return _newest_first(result)[:limit]

    def delete(self, job_id: str) -> bool:
        key = self.job_key(job_id)
        owner = self.client.hget(key, "owner")
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        if owner is not None:
            pipe.zrem(self.owner_key(_text(owner)), job_id)
        return bool(pipe.execute()[0])

    def all_ids(self) -> Iterator[str]:
        job_prefix = self.job_key("")
        pattern = _glob_escape(job_prefix) + "*"
        for key in self.client.scan_iter(match=pattern, count=500):
            yield _text(key)[len(job_prefix) :]

    def clear(self) -> int:
        """Delete every job and owner index under the prefix; count the jobs."""
        job_prefix = self.job_key("")
        jobs = 0
        batch: list[str] = []
        pattern = _glob_escape(self.prefix) + "*"
        for raw in self.client.scan_iter(match=pattern, count=500):
            key = _text(raw)
            batch.append(key)
            if key.startswith(job_prefix):
                jobs += 1
            if len(batch) >= 500:
                self.client.delete(*batch)
                batch.clear()
        if batch:
            self.client.delete(*batch)
        return jobs

    @staticmethod
    def _encode(record: JobRecord) -> dict[str, str]:
        fields: dict[str, str] = {
            "id": record.id,
            "task_name": record.task_name,
            "state": record.state,
            "created_at": repr(record.created_at),
            "updated_at": repr(record.updated_at),
            "progress": repr(float(record.progress)),
            "seen": "1" if record.seen else "0",
        }
        for name in _OPTIONAL_STR + _OPTIONAL_FLOAT:
            value = getattr(record, name)
            if value is not None:
                fields[name] = value if isinstance(value, str) else repr(float(value))
        return fields

    @staticmethod
    def _decode(raw: Mapping[Any, Any]) -> JobRecord | None:
        if not raw:
            return None
        try:
            data = {_text(k): _text(v) for k, v in raw.items()}
            record = JobRecord(
                id=data["id"],
                task_name=data["task_name"],
                owner=data.get("owner"),
                description=data.get("description"),
                state=data["state"],
                created_at=float(data["created_at"]),
                updated_at=float(data["updated_at"]),
                progress=float(data.get("progress", "0")),
                seen=data.get("seen") == "1",
                seen_at=_opt_float(data.get("seen_at")),
                finished_at=_opt_float(data.get("finished_at")),
            )
        except (KeyError, ValueError):
            # A half-written or foreign hash is treated as absent, not a crash.
            return None
        numbers = (record.created_at, record.updated_at, record.progress)
        optional = (record.seen_at, record.finished_at)
        if not all(map(math.isfinite, numbers + tuple(v for v in optional if v is not None))):
            return None  # NaN or Infinity: not strict JSON, so not a record of ours
        return record


class Registry:
    """The behaviour on top of a store: state changes, signals, visibility, cleanup."""

    def __init__(
        self,
        store: RegistryStore,
        *,
        seen_ttl: float = 120.0,
        unseen_ttl: float = 7 * 86400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.seen_ttl = seen_ttl
        self.unseen_ttl = unseen_ttl
        self.clock = clock
        # Serialises read-modify-write within this process; across processes
        # the last writer wins, which is fine for progress and state updates.
        self._lock = threading.Lock()

    def record_sent(
        self,
        job_id: str,
        task_name: str,
        *,
        owner: str | None,
        description: str | None = None,
    ) -> JobRecord:
        """Start tracking a job that was just queued."""
        now = self.clock()
        record = JobRecord(
            id=job_id,
            task_name=task_name,
            owner=owner,
            description=description,
            state="queued",
            created_at=now,
            updated_at=now,
        )
        self.store.save(record)
        task_changed.send(self, record=record, previous_state=None)
        return record

    def record_state(
        self, job_id: str, state: str, *, progress: float | None = None
    ) -> JobRecord | None:
        """Move a tracked job to ``state``; untracked ids are ignored (None)."""
        if state not in JOB_STATES:
            raise ValueError(f"unknown job state {state!r}; expected one of {JOB_STATES}")
        if progress is not None:
            progress = _checked_progress(progress)
        with self._lock:
            record = self.store.get(job_id)
            if record is None:
                return None
            previous = record.state
            now = self.clock()
            record.state = state
            record.updated_at = now
            if progress is not None:
                record.progress = progress
            if state == "succeeded":
                record.progress = 100.0
            if state in FINISHED_STATES:
                if previous not in FINISHED_STATES or record.finished_at is None:
                    record.finished_at = now
            elif previous in FINISHED_STATES:
                # Back in flight (e.g. re-run): it is news again for its owner.
                record.finished_at = None
                record.seen = False
                record.seen_at = None
            self.store.save(record)
        if state != previous:
            task_changed.send(self, record=record, previous_state=previous)
        return record

    def record_progress(self, job_id: str, progress: float) -> None:
        """Note progress without a signal; late reports for finished jobs are dropped."""
        progress = _checked_progress(progress)
        with self._lock:
            record = self.store.get(job_id)
            if record is None or record.finished:
                return
            record.progress = progress
            record.updated_at = self.clock()
            self.store.save(record)

    def get(self, job_id: str) -> JobRecord | None:
        return self.store.get(job_id)

    def forget(self, job_id: str) -> bool:
        """Drop a job from its owner's list for good (they left a run others share)."""
        return self.store.delete(job_id)

    def jobs_of(
        self, owner: str, *, states: Iterable[str] | None = None, limit: int = 100
    ) -> list[JobRecord]:
        """The owner's jobs, newest first."""
        return self.store.list_for_owner(owner, states=states, limit=limit)

    def completed_jobs_of(self, owner: str, limit: int = 100) -> list[JobRecord]:
        return self.store.list_for_owner(owner, states=FINISHED_STATES, limit=limit)

    def for_display(
        self, owner: str, *, recent_seconds: float = 120.0, limit: int = 100
    ) -> list[JobRecord]:
        """What a "my jobs" panel shows: everything unseen, plus just-dismissed jobs.

        Recently seen jobs linger briefly so a dismissed bar does not vanish
        from other open tabs before they notice.
        """
        if limit <= 0:
            return []
        now = self.clock()
        fetch = limit
        while True:
            records = self.store.list_for_owner(owner, limit=fetch)
            shown = [
                r
                for r in records
                if not r.seen or (r.seen_at is not None and now - r.seen_at <= recent_seconds)
            ]
            if len(shown) >= limit or len(records) < fetch:
                return shown[:limit]
            fetch *= 2

    def mark_seen(self, job_id: str, owner: str) -> JobRecord:
        """Record that the owner saw a finished job's outcome.

        Someone else's job raises the same LookupError as a missing one, so the
        call cannot be used to probe for other users' job ids.
        """
        with self._lock:
            record = self.store.get(job_id)
            if record is None or record.owner is None or record.owner != owner:
                raise LookupError(f"no job {job_id!r} for this owner")
            if not record.finished:
                raise JobNotFinished(f"job {job_id!r} is still {record.state}")
            if record.seen:
                return record
            record.seen = True
            record.seen_at = self.clock()
            self.store.save(record)
            return record

    def cleanup(self) -> int:
        """Forget finished jobs: seen ones after ``seen_ttl``, unseen after ``unseen_ttl``."""
        now = self.clock()
        deleted = 0
        batch: list[str] = []
        for job_id in self.store.all_ids():
            batch.append(job_id)
            if len(batch) >= _BATCH:
                deleted += self._cleanup_batch(batch, now)
                batch = []
        if batch:
            deleted += self._cleanup_batch(batch, now)
        return deleted

    def _cleanup_batch(self, job_ids: list[str], now: float) -> int:
        deleted = 0
        for record in self.store.get_many(job_ids).values():
            if self._expired(record, now) and self.store.delete(record.id):
                deleted += 1
        return deleted

    def _expired(self, record: JobRecord, now: float) -> bool:
        if not record.finished:
            return False
        if record.seen:
            seen_at = record.seen_at if record.seen_at is not None else record.updated_at
            return now - seen_at > self.seen_ttl
        finished_at = record.finished_at if record.finished_at is not None else record.updated_at
        return now - finished_at > self.unseen_ttl

    def clear(self) -> int:
        """Forget every record, tracked or not; returns how many."""
        return self.store.clear()


def _checked_progress(progress: float) -> float:
    """Keep bars within 0..100; a NaN is a bug in the task, so say so."""
    value = float(progress)
    if math.isnan(value):
        raise ValueError("progress must be a number, got NaN")
    return min(max(value, 0.0), 100.0)


__all__ = [
    "FINISHED_STATES",
    "JOB_STATES",
    "JobNotFinished",
    "JobRecord",
    "MemoryRegistryStore",
    "RedisRegistryStore",
    "Registry",
    "RegistryStore",
]
