"""Progress math: percent, smoothed rate and time remaining (pure, no I/O).

Kept free of Celery and Flask so it can be tested with made-up clocks, and
cheap on the hot path: ``ProgressMeter.due`` is called for every item of a
user's loop, the rest only when a write is due.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

#: ``time_remaining`` when there is no estimate yet.
NO_ESTIMATE = -1


def percent(completed: float, total: float) -> float:
    """``completed / total`` as 0..100, never outside; 0 when total is unknown."""
    if total <= 0:
        return 0.0
    value = 100.0 * completed / total
    if value <= 0:
        return 0.0
    if value >= 100:
        return 100.0
    return round(value, 1)


def time_remaining(completed: float, total: float, rate: float | None) -> float:
    """Seconds left at ``rate`` items per second, or ``NO_ESTIMATE``."""
    if rate is None or rate <= 0 or completed <= 0 or total <= 0:
        return NO_ESTIMATE
    left = max(total - completed, 0)
    seconds = left / rate
    return round(seconds, 1) if math.isfinite(seconds) else NO_ESTIMATE


def finite_number(value: Any, name: str) -> int | float:
    """``value`` as a plain int or float for the PROGRESS meta, or a clear error.

    The meta is strict JSON: NaN and infinities, which browsers cannot parse,
    are refused like anything that is not a real number.
    """
    if type(value) is int:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real | Decimal):
        raise TypeError(f"update_progress: {name} must be a number, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(
            f"update_progress: {name} must be a finite number, got {value!r} "
            "(strict JSON has no NaN or Infinity)"
        )
    return number


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


@dataclass
class ProgressMeter:
    """Decides when progress is worth writing and what to write.

    ``interval`` is the minimum time between two writes, ``smoothing`` the
    weight of the newest rate sample in an exponential moving average, which
    keeps one slow item from making the estimate jump.
    """

    started_at: float
    interval: float = 0.5
    smoothing: float = 0.3
    last_write_at: float = field(default=float("-inf"))
    last_completed: float = 0
    last_total: float = 0
    last_percent: float = -1.0
    #: What the job last reported, written or not (a detail flush writes these).
    reported_completed: float = 0
    reported_total: float = 0
    rate: float | None = None
    #: Set by the task whenever the job reports progress, written or not.
    touched: bool = False
    _sample_at: float = field(default=0.0, repr=False)
    _sample_completed: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._sample_at = self.started_at

    def due(self, completed: float, total: float, update_frequency: int, now: float) -> bool:
        """True when a write should happen now.

        A write needs ``update_frequency`` more items since the last one and
        ``interval`` seconds since the last write; reaching ``total`` always
        writes so the bar ends on 100.
        """
        if completed >= total > 0:
            return self.last_percent < 100.0
        if completed - self.last_completed < update_frequency:
            return False
        return now - self.last_write_at >= self.interval

    def record(self, completed: float, total: float, now: float) -> dict[str, Any]:
        """Note a write at ``now`` and return the PROGRESS meta for it.

        ``completed`` and ``total`` must be finite real numbers (see
        ``finite_number``); the meta holds them as plain ints or floats.
        """
        completed = finite_number(completed, "completed")
        total = finite_number(total, "total")
        elapsed = now - self._sample_at
        done = completed - self._sample_completed
        if elapsed > 0 and done > 0:
            sample = done / elapsed
            if self.rate is None:
                self.rate = sample
            else:
                self.rate = self.smoothing * sample + (1 - self.smoothing) * self.rate
            self.rate = _finite_or_none(self.rate)  # only astronomic counts overflow
            self._sample_at = now
            self._sample_completed = completed
        self.last_write_at = now
        self.last_completed = completed
        self.last_total = total
        value = percent(completed, total)
        self.last_percent = value
        return {
            "progress_percent": value,
            "time_remaining": time_remaining(completed, total, self.rate),
            "rate": round(self.rate, 3) if self.rate is not None else None,
            "completed": completed,
            "total": total,
        }

    def finished(self, now: float) -> dict[str, Any] | None:
        """The closing 100% meta, or None when the last write already said 100."""
        if self.last_percent >= 100.0:
            return None
        total = self.last_total if self.last_total > 0 else 1
        self.last_write_at = now
        self.last_percent = 100.0
        return {
            "progress_percent": 100.0,
            "time_remaining": 0,
            "rate": round(self.rate, 3) if self.rate is not None else None,
            "completed": total,
            "total": total,
        }
