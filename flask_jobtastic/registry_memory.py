"""The single-process registry store: tests, development, one-process apps.

Records live in a dict with a per-owner index, behind a lock; web and
worker processes cannot see each other's writes here (use
``registry_redis.RedisRegistryStore`` for that).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Iterator, Sequence

from flask_jobtastic.registry_store import JobRecord, newest_first


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
        return [dataclasses.replace(r) for r in newest_first(records)[: max(limit, 0)]]

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


__all__ = ["MemoryRegistryStore"]
