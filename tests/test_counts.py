from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flask_jobtastic.counts import ItemCounter


def test_counts_and_pending() -> None:
    counter = ItemCounter(5)
    counter.add_one_success("a.txt")
    counter.add_one_failure("b.txt")
    counter.track(True, 3)
    snap = counter.snapshot()
    assert snap == {
        "counts": {
            "amount": 5,
            "success": 2,
            "failure": 1,
            "pending": 2,
            "succeeded": ["a.txt", 3],
            "failed": ["b.txt"],
        }
    }
    json.dumps(snap)


def test_pending_is_none_without_amount_and_never_negative() -> None:
    counter = ItemCounter()
    assert not counter.used
    counter.track(False)
    assert counter.used
    assert counter.pending is None
    assert counter.snapshot()["counts"]["failed"] == []
    counter.set_amount(0)
    assert counter.pending == 0


def test_item_lists_keep_the_newest_and_follow_the_json_rule() -> None:
    counter = ItemCounter(max_items=3)
    when = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    for item in ["one", Path("/tmp/two"), 3.5, when, ("a", 1), {"k": 1}]:
        counter.add_one_success(item)
    counter.add_one_failure(True)
    counts = counter.snapshot()["counts"]
    assert counter.success == 6
    assert counts["succeeded"] == ["2024-05-01T12:30:00+00:00", ["a", 1], {"k": 1}]
    assert counts["failed"] == [True]
    json.loads(json.dumps(counts, allow_nan=False))


@pytest.mark.parametrize(
    ("item", "named"),
    [(b"raw", "item: bytes"), (float("nan"), "item: float NaN"), ({"x": {1, 2}}, 'item["x"]: set')],
)
def test_an_item_json_cannot_carry_is_refused_naming_it_and_not_counted(
    item: object, named: str
) -> None:
    counter = ItemCounter(2)
    with pytest.raises(TypeError, match=re.escape(f'counts["failed"], {named}')):
        counter.add_one_failure(item)
    assert counter.failure == 0 and counter.snapshot()["counts"]["failed"] == []


def test_progress_tuple() -> None:
    counter = ItemCounter()
    assert counter.progress() is None
    counter.set_amount(0)
    assert counter.progress() is None
    counter.set_amount(4)
    counter.add_one_success()
    counter.add_one_failure()
    assert counter.progress() == (2, 4)


def test_dirty_flag() -> None:
    counter = ItemCounter()
    assert not counter.dirty
    counter.set_amount(3)
    assert counter.dirty
    counter.snapshot()
    assert not counter.dirty
    counter.set_amount(3)
    assert not counter.dirty
    counter.add_one_success()
    assert counter.dirty


@pytest.mark.parametrize("bad", [-1, 2.5, "3", True])
def test_invalid_amounts_are_refused(bad: object) -> None:
    with pytest.raises((ValueError, TypeError), match="amount"):
        ItemCounter().set_amount(bad)  # type: ignore[arg-type]
    with pytest.raises((ValueError, TypeError), match="amount"):
        ItemCounter(bad)  # type: ignore[arg-type]


def test_invalid_max_items_is_refused() -> None:
    with pytest.raises(ValueError, match="max_items"):
        ItemCounter(max_items=-1)
