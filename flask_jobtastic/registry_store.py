"""What the registry keeps about a job, and what a place to keep it must do.

:class:`JobRecord` and the :class:`RegistryStore` protocol sit apart from the
stores (``registry_memory``, ``registry_redis``) and from the behaviour on top
(``registry.Registry``), so each store depends on the contract only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

JOB_STATES = ("queued", "running", "succeeded", "failed", "revoked", "retrying")
FINISHED_STATES = frozenset({"succeeded", "failed", "revoked"})

#: How many records cleanup and listing read per round trip.
BATCH = 200


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
            seen_at=opt_float(data.get("seen_at")),
            finished_at=opt_float(data.get("finished_at")),
        )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def opt_float(value: Any) -> float | None:
    """A stored optional number: None stays None (shared with the Redis decoder)."""
    return None if value is None else float(value)


def newest_first(records: Iterable[JobRecord]) -> list[JobRecord]:
    """One ordering for both stores, ties broken by id as a Redis sorted set does."""
    return sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)


@runtime_checkable
class RegistryStore(Protocol):
    """Where records live; :class:`~flask_jobtastic.registry.Registry` holds the behaviour."""

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


__all__ = [
    "BATCH",
    "FINISHED_STATES",
    "JOB_STATES",
    "JobRecord",
    "RegistryStore",
    "newest_first",
    "opt_float",
]
