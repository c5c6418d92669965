"""The opt-in task registry: one record per tracked job, shared by web and workers.

A page lists "my jobs" with live progress bars and support agents can look up
what happened to a job, so the record outlives the request that started it.
:class:`Registry` holds the behaviour; the records and the store contract are
in ``registry_store``. Two stores behave the same way:
:class:`MemoryRegistryStore` (``registry_memory``) for a single process
(tests, development) and :class:`RedisRegistryStore` (``registry_redis``) for
real deployments, where web and worker processes need to see each other's
writes. The names stay importable from here.

Compared with the seed library this module never forgets a finished job that
nobody has looked at yet (it waits ``unseen_ttl``, not two minutes) and only
lets a job's owner mark it seen.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable

from flask_jobtastic.errors import JobtasticError
from flask_jobtastic.registry_memory import MemoryRegistryStore
from flask_jobtastic.registry_redis import DEFAULT_RECORD_TTL, RedisRegistryStore
from flask_jobtastic.registry_store import (
    BATCH,
    FINISHED_STATES,
    JOB_STATES,
    JobRecord,
    RegistryStore,
)
from flask_jobtastic.signals import task_changed

logger = logging.getLogger("flask_jobtastic")


class JobNotFinished(JobtasticError, ValueError):
    """Only finished jobs can be marked seen: a running one still needs its bar."""


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
        self._announce(record.owner, job_id)
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
            self._announce(record.owner, job_id)
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
        record = self.store.get(job_id)
        deleted = self.store.delete(job_id)
        if record is not None:
            self._announce(record.owner, job_id)
        return deleted

    def owner_channel(self, owner: str) -> str | None:
        """The pub/sub channel that says an owner's list changed, if the store has one."""
        channel = getattr(self.store, "owner_channel", None)
        return channel(owner) if callable(channel) else None

    def _announce(self, owner: str | None, job_id: str) -> None:
        """Tell open "my jobs" streams that the owner's list changed (Redis stores)."""
        announce = getattr(self.store, "announce", None)
        if owner is None or not callable(announce):
            return
        try:
            announce(owner, job_id)
        except Exception:
            logger.warning("Could not announce a change of job %s", job_id, exc_info=True)

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
        self._announce(owner, job_id)
        return record

    def cleanup(self) -> int:
        """Forget finished jobs: seen ones after ``seen_ttl``, unseen after ``unseen_ttl``."""
        now = self.clock()
        deleted = 0
        batch: list[str] = []
        for job_id in self.store.all_ids():
            batch.append(job_id)
            if len(batch) >= BATCH:
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
    "DEFAULT_RECORD_TTL",
    "FINISHED_STATES",
    "JOB_STATES",
    "JobNotFinished",
    "JobRecord",
    "MemoryRegistryStore",
    "RedisRegistryStore",
    "Registry",
    "RegistryStore",
]
