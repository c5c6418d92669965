"""Small statistics and formatting helpers (no I/O)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value with ``pct`` % at or below it."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return float(ordered[rank - 1])


def fmt_seconds(seconds: float) -> str:
    """A duration with a unit that keeps three significant digits readable."""
    magnitude = abs(seconds)
    if magnitude < 1e-6:
        return f"{seconds * 1e9:.1f} ns"
    if magnitude < 1e-3:
        return f"{seconds * 1e6:.2f} µs"
    if magnitude < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def fmt_spread(values: Sequence[float]) -> str:
    """``min–max`` of repeats, to show how noisy a median is."""
    if len(values) < 2:
        return ""
    return f"{fmt_seconds(min(values))}–{fmt_seconds(max(values))}"
