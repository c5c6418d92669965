from __future__ import annotations

import pytest

from flask_jobtastic.progress import NO_ESTIMATE, ProgressMeter, percent, time_remaining


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
