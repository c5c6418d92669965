"""The registry store contract, run against both stores so they cannot drift apart."""

from __future__ import annotations

from flask_jobtastic.registry_store import JobRecord, RegistryStore

START = 1_700_000_000.0


def test_store_save_replaces_and_get_many_skips_missing(store: RegistryStore) -> None:
    record = JobRecord("j1", "t", "alice", "first", "queued", START, START)
    store.save(record)
    record.description = None
    record.state = "running"
    store.save(record)
    found = store.get_many(["j1", "nope", "j1"])
    assert found == {"j1": record}
    assert found["j1"].description is None
    assert store.get_many([]) == {}


def test_store_returns_copies(store: RegistryStore) -> None:
    record = JobRecord("j1", "t", "alice", None, "queued", START, START)
    store.save(record)
    record.state = "failed"
    fetched = store.get("j1")
    assert fetched is not None and fetched.state == "queued"
    fetched.state = "revoked"
    assert store.get("j1").state == "queued"  # type: ignore[union-attr]


def test_store_owner_change_moves_the_job(store: RegistryStore) -> None:
    record = JobRecord("j1", "t", "alice", None, "queued", START, START)
    store.save(record)
    record.owner = "bob"
    store.save(record)
    assert store.list_for_owner("alice") == []
    assert [r.id for r in store.list_for_owner("bob")] == ["j1"]


def test_store_delete(store: RegistryStore) -> None:
    store.save(JobRecord("j1", "t", "alice", None, "queued", START, START))
    assert store.delete("j1") is True
    assert store.delete("j1") is False
    assert store.get("j1") is None
    assert store.list_for_owner("alice") == []
    assert list(store.all_ids()) == []
