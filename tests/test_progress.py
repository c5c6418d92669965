from __future__ import annotations

import time
from decimal import Decimal
from fractions import Fraction

import pytest

from flask_jobtastic.progress import NO_ESTIMATE, ProgressMeter, percent, time_remaining
from tests import strict
from tests.tasks import DetailsFirstTask


@pytest.mark.parametrize(
    ("completed", "total", "expected"),
    [(0, 10, 0), (5, 10, 50), (10, 10, 100), (15, 10, 100), (-3, 10, 0), (1, 0, 0), (1, 3, 33.3)],
)
def test_percent_is_clamped_and_zero_of_n_is_zero(completed, total, expected):
    assert percent(completed, total) == expected


def test_time_remaining_needs_a_rate_and_some_progress():
    assert time_remaining(0, 10, 2.0) == NO_ESTIMATE
    assert time_remaining(5, 10, None) == NO_ESTIMATE
    assert time_remaining(5, 10, 2.5) == 2.0


def test_first_record_has_no_estimate_then_an_honest_one():
    meter = ProgressMeter(started_at=0.0, interval=0.5)
    first = meter.record(0, 100, 0.0)
    assert first["progress_percent"] == 0 and first["time_remaining"] == NO_ESTIMATE
    second = meter.record(10, 100, 1.0)  # 10 items per second
    assert second["time_remaining"] == pytest.approx(9.0)
    assert second["rate"] == pytest.approx(10.0)


def test_estimate_is_smoothed_against_one_slow_stretch():
    meter = ProgressMeter(started_at=0.0, interval=0.0, smoothing=0.3)
    meter.record(10, 100, 1.0)  # 10/s
    slow = meter.record(11, 100, 2.0)  # 1/s for one second
    # A raw estimate would say 89 s; the smoothed rate 7.3/s says about 12 s.
    assert 10 < slow["time_remaining"] < 15


def test_due_respects_frequency_and_interval_but_always_writes_the_end():
    meter = ProgressMeter(started_at=0.0, interval=0.5)
    meter.record(0, 100, 0.0)
    assert not meter.due(1, 100, 1, 0.1)  # too soon
    assert meter.due(1, 100, 1, 0.6)
    assert not meter.due(5, 100, 10, 5.0)  # too few items
    assert meter.due(100, 100, 10, 0.01)  # the end always
    meter.record(100, 100, 0.01)
    assert not meter.due(100, 100, 1, 10.0)  # but only once


def test_finished_closes_on_100_once():
    meter = ProgressMeter(started_at=0.0)
    meter.record(40, 50, 1.0)
    closing = meter.finished(2.0)
    assert closing is not None
    assert closing["progress_percent"] == 100 and closing["completed"] == 50
    assert meter.finished(3.0) is None


def test_million_calls_make_few_writes():
    meter = ProgressMeter(started_at=0.0, interval=0.5)
    writes = 0
    for i in range(1_000_000):
        now = i * 1e-5  # ten seconds in all
        if meter.due(i + 1, 1_000_000, 1, now):
            meter.record(i + 1, 1_000_000, now)
            writes += 1
    assert writes <= 10 / 0.5 + 2


def test_a_detail_flush_writes_the_progress_last_reported_not_last_written():
    meter = ProgressMeter(started_at=0.0, interval=0.5)
    meter.record(0, 40, 0.0)
    meter.reported_completed, meter.reported_total = 12, 40
    assert meter.record(meter.reported_completed, meter.reported_total, 1.0)["completed"] == 12


@pytest.mark.parametrize(
    ("value", "error"),
    [(float("nan"), ValueError), (float("inf"), ValueError), ("3", TypeError), (None, TypeError)],
)
def test_progress_that_strict_json_cannot_carry_is_refused_naming_it(value, error):
    meter = ProgressMeter(started_at=0.0)
    with pytest.raises(error, match="update_progress: completed must be a"):
        meter.record(value, 10, 1.0)
    with pytest.raises(error, match="update_progress: total must be a"):
        meter.record(1, value, 1.0)


class Count(int):
    """An int of its own kind, as numpy's or an ORM's counts are."""


def test_other_real_numbers_are_written_as_plain_ints_and_floats():
    meta = ProgressMeter(started_at=0.0).record(Decimal("2.5"), Count(10), 1.0)
    assert (meta["completed"], meta["total"]) == (2.5, 10)
    assert type(meta["completed"]) is float and type(meta["total"]) is int
    assert ProgressMeter(started_at=0.0).record(Fraction(1, 4), 1, 1.0)["completed"] == 0.25


@pytest.mark.usefixtures("celery_worker")
@pytest.mark.parametrize("how", ["update_step", "notify"])
def test_details_reported_before_progress_do_not_hold_the_bar_back(app, client, token, how):
    """``update_step``/``notify`` before ``update_progress`` in each loop: the bar moves."""
    with app.app_context():
        result = DetailsFirstTask.delay_or_fail(token=token, how=how, items=40)
    running = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        document = strict.status(client, result.id)
        if document["ready"]:
            break
        if document["state"] == "PROGRESS":
            running.append(document)
        time.sleep(0.05)
    assert document["state"] == "SUCCESS"
    moving = [d for d in running if 0 < d["progress_percent"] < 100]
    assert len(moving) >= 3, [(d["progress_percent"], d.get("total")) for d in running]
    for document in moving:
        assert document["total"] == 40
        assert document["progress_percent"] == pytest.approx(
            100 * document["completed"] / 40, abs=0.1
        )
