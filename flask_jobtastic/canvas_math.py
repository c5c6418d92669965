"""The arithmetic of a canvas: how far along it is, how long it has left, what state.

Pure. The parts of a canvas keep a few running sums as they report (see
``canvas_store``); everything a reader sees is computed here from those sums.

Weighting: a part that reports a ``total`` weighs that much (a part of
10,000 rows counts for more than a part of 10); a part that reported none
yet weighs the mean of those that did, or 1 when none did. A chain weighs
every stage the same.
"""

from __future__ import annotations

import time
from typing import Any

from .progress import NO_ESTIMATE

#: The part states the counts are kept for, in the order the document lists them.
PART_STATES = ("pending", "running", "succeeded", "failed", "revoked")
FINISHED = frozenset({"succeeded", "failed", "revoked"})


def fresh_sums(size: int) -> dict[str, Any]:
    """The sums of a canvas whose ``size`` parts all wait."""
    return {
        "version": 0,
        "counts": {"pending": size, "running": 0, "succeeded": 0, "failed": 0, "revoked": 0},
        # parts that reported a total: how many, the sum of totals, the units done
        "known": 0,
        "units": 0.0,
        "units_done": 0.0,
        # the fractions done of the parts that reported no total, and of all parts
        "unknown_done": 0.0,
        "fraction_sum": 0.0,
        "started_at": None,
        "first_failure": None,
    }


def part_record(state: str, fraction: float, total: float) -> str:
    """How one part's entry is stored: ``state|fraction|total``."""
    return f"{state}|{min(max(fraction, 0.0), 1.0):.6g}|{max(total, 0.0):.6g}"


def progress_of(sums: dict[str, Any], size: int, weighting: str) -> float:
    """The canvas's fraction done, 0 to 1."""
    if size <= 0:
        return 1.0
    if weighting == "stages":
        return _clamp(float(sums.get("fraction_sum") or 0) / size)
    known = int(sums.get("known") or 0)
    unknown = size - known
    unknown_done = float(sums.get("unknown_done") or 0)
    if known <= 0:
        return _clamp(unknown_done / size)
    units = float(sums.get("units") or 0)
    mean = units / known if units > 0 else 1.0
    whole = units + unknown * mean
    return _clamp((float(sums.get("units_done") or 0) + unknown_done * mean) / whole)


def time_left(fraction: float, started_at: Any, now: float) -> float:
    """Seconds left at the canvas's overall rate since its first part started.

    The whole span's rate, rather than the latest part's, so one slow part
    does not make the estimate jump: the smoothing a job's own rate gets.
    """
    if not isinstance(started_at, int | float) or fraction <= 0:
        return NO_ESTIMATE
    if fraction >= 1:
        return 0
    elapsed = max(now - float(started_at), 0.0)
    return round(elapsed * (1 - fraction) / fraction, 1)


def children_counts(sums: dict[str, Any], size: int) -> dict[str, int]:
    """The document's ``children``: ``total`` and a count per part state."""
    counts = sums.get("counts") or {}
    return {"total": size, **{name: int(counts.get(name) or 0) for name in PART_STATES}}


def stopping(children: dict[str, int], *, lost: bool = False) -> dict[str, int]:
    """The counts of a canvas that failed or was cancelled: the parts still waiting or
    running are counted as revoked, since they were asked to stop (the document
    then stays what the person saw as the canvas ended). ``lost``: the running
    parts died with their worker, and count as failed."""
    running, pending = children["running"], children["pending"]
    return {
        **children,
        "pending": 0,
        "running": 0,
        "failed": children["failed"] + (running if lost else 0),
        "revoked": children["revoked"] + pending + (0 if lost else running),
    }


def has_started(sums: dict[str, Any]) -> bool:
    """PENDING until a part starts (or one was already done, from the cache)."""
    counts = sums.get("counts") or {}
    return any(int(counts.get(name) or 0) for name in ("running", *FINISHED))


def progress_info(
    sums: dict[str, Any], size: int, weighting: str, now: float | None = None
) -> dict[str, Any]:
    """What a running canvas's PROGRESS meta holds."""
    fraction = progress_of(sums, size, weighting)
    percent = round(fraction * 100, 1)
    return {
        "progress_percent": min(percent, 99.9) if percent >= 100 else percent,
        "time_remaining": time_left(fraction, sums.get("started_at"), now or time.time()),
        "children": children_counts(sums, size),
    }


def is_settled(sums: dict[str, Any]) -> bool:
    """No part waits or runs any more."""
    counts = sums.get("counts") or {}
    return not int(counts.get("pending") or 0) and not int(counts.get("running") or 0)


def sent_flags(kind: str, header_size: int, part_states: list[str]) -> list[bool]:
    """Which parts have been sent, from the parts' states (the body is last).

    A group's and a chord header's parts go at once; a chord's body once
    its whole header succeeded; a chain's stage once the one before succeeded.
    """
    if kind == "group":
        return [True] * header_size
    if kind == "chord":
        header = part_states[:header_size]
        return [True] * header_size + [all(s == "succeeded" for s in header)]
    return [i == 0 or part_states[i - 1] == "succeeded" for i in range(len(part_states))]


def _clamp(value: float) -> float:
    return min(max(value, 0.0), 1.0)
