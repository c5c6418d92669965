"""The arithmetic of a canvas, from the sums its parts keep."""

from __future__ import annotations

from flask_jobtastic.canvas_math import (
    children_counts,
    fresh_sums,
    has_started,
    progress_info,
    progress_of,
    sent_flags,
    stopping,
    time_left,
)


def sums_of(parts: list[tuple[str, float, float]]) -> dict:
    """The sums the report script keeps, built from ``(state, fraction, total)`` parts."""
    sums = fresh_sums(len(parts))
    for state, fraction, total in parts:
        sums["counts"]["pending"] -= 1
        sums["counts"][state] += 1
        if total > 0:
            sums["known"] += 1
            sums["units"] += total
            sums["units_done"] += fraction * total
        else:
            sums["unknown_done"] += fraction
        sums["fraction_sum"] += fraction
    return sums


def test_parts_weigh_what_they_report() -> None:
    # 10,000 rows half done beside 10 rows all done: the big part decides
    sums = sums_of([("running", 0.5, 10_000), ("succeeded", 1.0, 10)])
    assert round(progress_of(sums, 2, "units"), 3) == round(5010 / 10010, 3)


def test_parts_that_report_no_total_weigh_alike() -> None:
    sums = sums_of([("running", 0.5, 0), ("succeeded", 1.0, 0), ("pending", 0.0, 0)])
    assert progress_of(sums, 3, "units") == 0.5


def test_a_part_yet_to_report_weighs_the_mean_of_the_others() -> None:
    sums = sums_of([("succeeded", 1.0, 100), ("pending", 0.0, 0)])
    assert progress_of(sums, 2, "units") == 0.5  # 100 done of (100 + a mean 100)


def test_a_chain_advances_by_stage_whatever_the_totals() -> None:
    sums = sums_of([("succeeded", 1.0, 1_000_000), ("running", 0.5, 10), ("pending", 0.0, 0)])
    assert progress_of(sums, 3, "stages") == 0.5


def test_time_left_comes_from_the_overall_rate() -> None:
    assert time_left(0.25, 100.0, 130.0) == 90.0  # a quarter in 30 s: 90 s to go
    assert time_left(0.0, 100.0, 130.0) == -1
    assert time_left(0.5, None, 130.0) == -1
    assert time_left(1.0, 100.0, 130.0) == 0


def test_the_document_fields_of_a_running_canvas() -> None:
    sums = sums_of(
        [("succeeded", 1.0, 0), ("running", 0.0, 0), ("failed", 1.0, 0), ("pending", 0.0, 0)]
    )
    sums["started_at"] = 0.0
    info = progress_info(sums, 4, "units", now=10.0)
    assert info["children"] == {
        "total": 4,
        "pending": 1,
        "running": 1,
        "succeeded": 1,
        "failed": 1,
        "revoked": 0,
    }
    assert info["progress_percent"] == 50.0
    assert info["time_remaining"] == 10.0


def test_a_running_canvas_never_reads_100() -> None:
    sums = sums_of([("succeeded", 1.0, 0)])
    assert progress_info(sums, 1, "units", now=1.0)["progress_percent"] == 99.9


def test_pending_until_a_part_started_or_was_cached() -> None:
    assert not has_started(fresh_sums(3))
    assert has_started(sums_of([("running", 0.0, 0)]))
    assert has_started(sums_of([("succeeded", 1.0, 0), ("pending", 0.0, 0)]))
    assert children_counts(fresh_sums(2), 2)["pending"] == 2


def test_which_parts_were_sent() -> None:
    assert sent_flags("group", 2, ["pending", "running"]) == [True, True]
    assert sent_flags("chord", 2, ["succeeded", "running", "pending"]) == [True, True, False]
    assert sent_flags("chord", 2, ["succeeded", "succeeded", "pending"]) == [True, True, True]
    assert sent_flags("chain", 3, ["succeeded", "running", "pending"]) == [True, True, False]


def test_a_canvas_that_ends_early_counts_what_it_stops_as_revoked() -> None:
    counts = {"total": 5, "pending": 2, "running": 1, "succeeded": 1, "failed": 1, "revoked": 0}
    assert stopping(counts) == {
        "total": 5,
        "pending": 0,
        "running": 0,
        "succeeded": 1,
        "failed": 1,
        "revoked": 3,
    }
