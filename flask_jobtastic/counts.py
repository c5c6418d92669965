"""Success / failure counts over a job's items (pure, no I/O).

A job that walks a list of things can say how many went through, how many
did not and which ones, so the user can act on the failures without reading
logs. The item lists keep only the newest ``max_items`` entries so the
PROGRESS meta stays small.

Item names follow the one rule of ``jsonsafe``: datetimes, UUIDs, paths and
the like are listed as text, and a value strict JSON cannot carry (bytes,
NaN, objects) is refused with a ``TypeError`` naming it.

A counter belongs to one running job, which runs in one thread: there are no
locks.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .jsonsafe import HINT, NotJSONError, to_json


def _listed(item: Any, field: str) -> Any:
    """``item`` as listed in the meta, by the rule of ``jsonsafe`` (or a clear TypeError)."""
    try:
        return to_json(item, "item")
    except NotJSONError as exc:
        raise TypeError(
            f'a counted item cannot be listed in counts["{field}"], {exc}; {HINT}'
        ) from None


def _check_count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"{what} must be 0 or more, got {value}")
    return value


class ItemCounter:
    """Counts successes and failures against an optional expected ``amount``."""

    def __init__(self, amount: int | None = None, *, max_items: int = 50) -> None:
        self.amount: int | None = None if amount is None else _check_count(amount, "amount")
        max_items = _check_count(max_items, "max_items")
        self.success = 0
        self.failure = 0
        self._succeeded: deque[Any] = deque(maxlen=max_items)
        self._failed: deque[Any] = deque(maxlen=max_items)
        self._dirty = amount is not None

    def set_amount(self, amount: int) -> None:
        """Set how many items the job expects to handle."""
        amount = _check_count(amount, "amount")
        if amount != self.amount:
            self.amount = amount
            self._dirty = True

    def add_one_success(self, item: Any = None) -> None:
        """Count one item that went through; ``item`` (if given) is listed."""
        if item is not None:  # refused before it is counted
            self._succeeded.append(_listed(item, "succeeded"))
        self.success += 1
        self._dirty = True

    def add_one_failure(self, item: Any = None) -> None:
        """Count one item that did not go through; ``item`` (if given) is listed."""
        if item is not None:  # refused before it is counted
            self._failed.append(_listed(item, "failed"))
        self.failure += 1
        self._dirty = True

    def track(self, is_success: bool, item: Any = None) -> None:
        """Count one item either way, for loops that compute the outcome."""
        if is_success:
            self.add_one_success(item)
        else:
            self.add_one_failure(item)

    @property
    def pending(self) -> int | None:
        """Items still to do, never negative; None while the amount is unknown."""
        if self.amount is None:
            return None
        return max(self.amount - self.success - self.failure, 0)

    @property
    def used(self) -> bool:
        """True once the job counted something, so the status shows the counts."""
        return self.amount is not None or self.success > 0 or self.failure > 0

    @property
    def dirty(self) -> bool:
        """Anything changed since the last snapshot."""
        return self._dirty

    def progress(self) -> tuple[int, int] | None:
        """``(handled, amount)`` for the progress bar, or None without a usable amount."""
        if self.amount is None or self.amount <= 0:
            return None
        return self.success + self.failure, self.amount

    def snapshot(self) -> dict[str, Any]:
        """The JSON-safe ``counts`` entry of the PROGRESS meta; clears ``dirty``."""
        self._dirty = False
        return {
            "counts": {
                "amount": self.amount,
                "success": self.success,
                "failure": self.failure,
                "pending": self.pending,
                "succeeded": list(self._succeeded),
                "failed": list(self._failed),
            }
        }
