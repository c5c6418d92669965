"""What only the in-process store does: its owner index never outgrows the records."""

from __future__ import annotations

from flask_jobtastic.registry_memory import MemoryRegistryStore
from flask_jobtastic.registry_store import JobRecord

START = 1_700_000_000.0


def test_memory_owner_index_forgets_owners_without_jobs() -> None:
    store = MemoryRegistryStore()
    record = JobRecord("j1", "t", "alice", None, "queued", START, START)
    store.save(record)
    record.owner = "bob"
    store.save(record)
    assert store._by_owner == {"bob": {"j1"}}  # alice's empty set is gone
    store.save(JobRecord("j2", "t", None, None, "queued", START, START))
    assert store.delete("j1") is True
    assert store._by_owner == {}
    assert list(store.all_ids()) == ["j2"]
