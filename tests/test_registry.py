"""The task registry, run against both stores so they cannot drift apart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from flask_jobtastic.registry import (
    FINISHED_STATES,
    JobNotFinished,
    JobRecord,
    Registry,
    RegistryStore,
)
from flask_jobtastic.signals import task_changed

START = 1_700_000_000.0


class FakeClock:
    """A clock the test moves by hand, so TTL rules run without sleeping."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(store: RegistryStore, clock: FakeClock) -> Registry:
    return Registry(store, seen_ttl=120.0, unseen_ttl=7 * 86400, clock=clock)


@pytest.fixture
def changes() -> Iterator[list[tuple[str, str | None, str]]]:
    """Every task_changed signal as (job id, previous state, new state)."""
    seen: list[tuple[str, str | None, str]] = []

    def receiver(sender: Any, *, record: JobRecord, previous_state: str | None) -> None:
        seen.append((record.id, previous_state, record.state))

    task_changed.connect(receiver)
    yield seen
    task_changed.disconnect(receiver)


def finish(registry: Registry, job_id: str, state: str = "succeeded") -> JobRecord:
    record = registry.record_state(job_id, state)
    assert record is not None
    return record


# --- recording -------------------------------------------------------------


def test_sent_job_is_queued_and_readable(registry: Registry, clock: FakeClock) -> None:
    registry.record_sent("j1", "tasks.add", owner="alice", description="Adding numbers")
    record = registry.get("j1")
    assert record is not None
    assert (record.task_name, record.owner, record.description) == (
        "tasks.add",
        "alice",
        "Adding numbers",
    )
    assert record.state == "queued"
    assert record.progress == 0.0
    assert record.created_at == record.updated_at == START
    assert not record.finished and record.finished_at is None
    assert registry.get("missing") is None


def test_state_and_progress_updates_are_stored(registry: Registry, clock: FakeClock) -> None:
    registry.record_sent("j1", "tasks.add", owner="alice")
    clock.advance(5)
    registry.record_state("j1", "running", progress=10)
    registry.record_progress("j1", 42.5)
    record = registry.get("j1")
    assert record is not None
    assert record.state == "running"
    assert record.progress == 42.5
    assert record.updated_at == START + 5

    clock.advance(5)
    done = finish(registry, "j1")
    assert done.progress == 100.0
    assert done.finished_at == START + 10
    stored = registry.get("j1")
    assert stored == done


def test_failed_job_keeps_its_last_progress(registry: Registry) -> None:
    registry.record_sent("j1", "tasks.add", owner="alice")
    registry.record_state("j1", "running", progress=30)
    failed = finish(registry, "j1", "failed")
    assert failed.progress == 30
    assert failed.finished


def test_progress_is_clamped_and_late_reports_ignored(registry: Registry) -> None:
    registry.record_sent("j1", "tasks.add", owner="alice")
    registry.record_progress("j1", 250)
    assert registry.get("j1").progress == 100.0  # type: ignore[union-attr]
    registry.record_progress("j1", -3)
    assert registry.get("j1").progress == 0.0  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        registry.record_progress("j1", float("nan"))
    finish(registry, "j1")
    registry.record_progress("j1", 12)
    assert registry.get("j1").progress == 100.0  # type: ignore[union-attr]


def test_unknown_job_is_not_created(registry: Registry) -> None:
    assert registry.record_state("ghost", "running") is None
    registry.record_progress("ghost", 50)
    assert registry.get("ghost") is None


def test_invalid_state_is_rejected(registry: Registry) -> None:
    registry.record_sent("j1", "tasks.add", owner="alice")
    with pytest.raises(ValueError, match="unknown job state"):
        registry.record_state("j1", "SUCCESS")
    assert registry.get("j1").state == "queued"  # type: ignore[union-attr]


def test_record_round_trips_through_json(registry: Registry) -> None:
    registry.record_sent("j1", "tasks.add", owner="alice", description=None)
    record = finish(registry, "j1", "revoked")
    data = json.loads(json.dumps(record.to_dict()))
    assert data["finished"] is True
    assert data["description"] is None
    assert JobRecord.from_dict(data) == record


def test_empty_strings_stay_distinct_from_none(registry: Registry) -> None:
    registry.record_sent("j1", "tasks.add", owner="", description="")
    record = registry.get("j1")
    assert record is not None
    assert record.owner == "" and record.description == ""
    registry.record_sent("j2", "tasks.add", owner=None)
    assert registry.get("j2").owner is None  # type: ignore[union-attr]


# --- signal ----------------------------------------------------------------


def test_signal_fires_once_per_state_change(
    registry: Registry, changes: list[tuple[str, str | None, str]]
) -> None:
    registry.record_sent("j1", "tasks.add", owner="alice")
    registry.record_state("j1", "running")
    registry.record_state("j1", "running", progress=20)  # same state
    registry.record_progress("j1", 50)  # progress only
    registry.record_state("j1", "retrying")
    registry.record_state("j1", "running")
    registry.record_state("j1", "succeeded")
    registry.record_state("j1", "succeeded")
    registry.record_state("ghost", "running")
    assert changes == [
        ("j1", None, "queued"),
        ("j1", "queued", "running"),
        ("j1", "running", "retrying"),
        ("j1", "retrying", "running"),
        ("j1", "running", "succeeded"),
    ]


def test_signal_carries_the_stored_record(registry: Registry) -> None:
    received: list[tuple[Any, JobRecord]] = []

    def receiver(sender: Any, *, record: JobRecord, previous_state: str | None) -> None:
        received.append((sender, record))

    task_changed.connect(receiver)
    try:
        registry.record_sent("j1", "tasks.add", owner="alice")
        registry.record_state("j1", "running", progress=40)
    finally:
        task_changed.disconnect(receiver)
    assert [sender for sender, _ in received] == [registry, registry]
    assert received[-1][1] == registry.get("j1")
    assert received[-1][1].progress == 40


# --- listing ---------------------------------------------------------------


def test_jobs_of_lists_only_that_owner_newest_first(registry: Registry, clock: FakeClock) -> None:
    for job_id, owner in [("a1", "alice"), ("b1", "bob"), ("a2", "alice"), ("a3", "alice")]:
        registry.record_sent(job_id, "tasks.add", owner=owner)
        clock.advance(1)
    registry.record_sent("anon", "tasks.add", owner=None)
    assert [r.id for r in registry.jobs_of("alice")] == ["a3", "a2", "a1"]
    assert [r.id for r in registry.jobs_of("bob")] == ["b1"]
    assert registry.jobs_of("carol") == []
    assert [r.id for r in registry.jobs_of("alice", limit=2)] == ["a3", "a2"]


def test_jobs_of_filters_by_state(registry: Registry, clock: FakeClock) -> None:
    for job_id in ("j1", "j2", "j3", "j4"):
        registry.record_sent(job_id, "tasks.add", owner="alice")
        clock.advance(1)
    registry.record_state("j1", "running")
    finish(registry, "j2", "failed")
    finish(registry, "j3")
    assert [r.id for r in registry.jobs_of("alice", states=["running", "queued"])] == [
        "j4",
        "j1",
    ]
    assert [r.id for r in registry.completed_jobs_of("alice")] == ["j3", "j2"]
    assert [r.id for r in registry.completed_jobs_of("alice", limit=1)] == ["j3"]
    assert all(r.state in FINISHED_STATES for r in registry.completed_jobs_of("alice"))


def test_state_filter_finds_old_matches_behind_many_newer_jobs(
    registry: Registry, clock: FakeClock
) -> None:
    registry.record_sent("old", "tasks.add", owner="alice")
    finish(registry, "old")
    for n in range(250):
        clock.advance(1)
        registry.record_sent(f"new{n}", "tasks.add", owner="alice")
    assert [r.id for r in registry.completed_jobs_of("alice", limit=5)] == ["old"]


def test_for_display_shows_unseen_and_recently_seen(registry: Registry, clock: FakeClock) -> None:
    for job_id in ("running", "unseen_done", "seen_long_ago", "seen_just_now"):
        registry.record_sent(job_id, "tasks.add", owner="alice")
        clock.advance(1)
    registry.record_state("running", "running")
    for job_id in ("unseen_done", "seen_long_ago", "seen_just_now"):
        finish(registry, job_id)
    registry.mark_seen("seen_long_ago", "alice")
    clock.advance(300)
    registry.mark_seen("seen_just_now", "alice")
    clock.advance(30)
    shown = [r.id for r in registry.for_display("alice", recent_seconds=120)]
    assert shown == ["seen_just_now", "unseen_done", "running"]
    clock.advance(100)
    assert [r.id for r in registry.for_display("alice", recent_seconds=120)] == [
        "unseen_done",
        "running",
    ]
    assert registry.for_display("bob") == []


def test_for_display_limit_counts_shown_jobs(registry: Registry, clock: FakeClock) -> None:
    registry.record_sent("wanted", "tasks.add", owner="alice")
    for n in range(5):
        clock.advance(1)
        registry.record_sent(f"hidden{n}", "tasks.add", owner="alice")
        finish(registry, f"hidden{n}")
        registry.mark_seen(f"hidden{n}", "alice")
    clock.advance(1000)
    assert [r.id for r in registry.for_display("alice", limit=1)] == ["wanted"]


# --- mark_seen -------------------------------------------------------------


def test_mark_seen_accepts_own_finished_job_once(registry: Registry, clock: FakeClock) -> None:
    registry.record_sent("j1", "tasks.add", owner="alice")
    finish(registry, "j1")
    clock.advance(10)
    first = registry.mark_seen("j1", "alice")
    assert first.seen and first.seen_at == START + 10
    clock.advance(10)
    again = registry.mark_seen("j1", "alice")
    assert again.seen_at == START + 10
    assert registry.get("j1") == first


def test_mark_seen_refuses_other_owners_like_missing_jobs(registry: Registry) -> None:
    registry.record_sent("j1", "tasks.add", owner="alice")
    registry.record_sent("anon", "tasks.add", owner=None)
    finish(registry, "j1")
    finish(registry, "anon")
    with pytest.raises(LookupError) as foreign:
        registry.mark_seen("j1", "mallory")
    with pytest.raises(LookupError) as missing:
        registry.mark_seen("nope", "mallory")
    assert str(foreign.value).replace("j1", "X") == str(missing.value).replace("nope", "X")
    with pytest.raises(LookupError):
        registry.mark_seen("anon", "None")
    assert registry.get("j1").seen is False  # type: ignore[union-attr]


def test_mark_seen_refuses_unfinished_jobs(registry: Registry) -> None:
    registry.record_sent("j1", "tasks.add", owner="alice")
    registry.record_state("j1", "running")
    with pytest.raises(JobNotFinished):
        registry.mark_seen("j1", "alice")
    with pytest.raises(ValueError):
        registry.mark_seen("j1", "alice")
    assert registry.get("j1").seen is False  # type: ignore[union-attr]


def test_rerun_after_finish_is_news_again(registry: Registry) -> None:
    registry.record_sent("j1", "tasks.add", owner="alice")
    finish(registry, "j1", "failed")
    registry.mark_seen("j1", "alice")
    record = registry.record_state("j1", "retrying")
    assert record is not None
    assert not record.seen and record.finished_at is None
    assert [r.id for r in registry.for_display("alice")] == ["j1"]


# --- cleanup ---------------------------------------------------------------


def test_cleanup_removes_seen_finished_jobs_after_seen_ttl(
    registry: Registry, clock: FakeClock
) -> None:
    registry.record_sent("j1", "tasks.add", owner="alice")
    finish(registry, "j1")
    registry.mark_seen("j1", "alice")
    clock.advance(119)
    assert registry.cleanup() == 0
    assert registry.get("j1") is not None
    clock.advance(2)
    assert registry.cleanup() == 1
    assert registry.get("j1") is None
    assert registry.jobs_of("alice") == []


def test_cleanup_keeps_unseen_finished_jobs_until_unseen_ttl(
    registry: Registry, clock: FakeClock
) -> None:
    registry.record_sent("j1", "tasks.add", owner="alice")
    finish(registry, "j1", "failed")
    clock.advance(3 * 86400)
    assert registry.cleanup() == 0
    assert [r.id for r in registry.for_display("alice")] == ["j1"]
    clock.advance(4 * 86400 + 1)
    assert registry.cleanup() == 1
    assert registry.get("j1") is None


def test_cleanup_never_removes_unfinished_jobs(registry: Registry, clock: FakeClock) -> None:
    for job_id, state in [("q", "queued"), ("r", "running"), ("t", "retrying")]:
        registry.record_sent(job_id, "tasks.add", owner="alice")
        if state != "queued":
            registry.record_state(job_id, state)
    clock.advance(365 * 86400)
    assert registry.cleanup() == 0
    assert {r.id for r in registry.jobs_of("alice")} == {"q", "r", "t"}


def test_cleanup_handles_many_jobs(registry: Registry, clock: FakeClock) -> None:
    for n in range(450):
        registry.record_sent(f"j{n}", "tasks.add", owner="alice")
        finish(registry, f"j{n}")
    registry.record_sent("keep", "tasks.add", owner="alice")
    clock.advance(8 * 86400)
    assert registry.cleanup() == 450
    assert [r.id for r in registry.jobs_of("alice")] == ["keep"]


def test_clear_forgets_everything(registry: Registry) -> None:
    registry.record_sent("j1", "tasks.add", owner="alice")
    registry.record_sent("j2", "tasks.add", owner="bob")
    registry.record_sent("j3", "tasks.add", owner=None)
    assert registry.clear() == 3
    assert registry.get("j1") is None
    assert registry.jobs_of("alice") == []
    assert list(registry.store.all_ids()) == []
    assert registry.clear() == 0
