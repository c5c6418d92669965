"""How :class:`~flask_jobtastic.cache.PyMemcacheCache` stores values: strict JSON.

Never pickle: whoever can write to memcached (it has no authentication by
default) would run code in every web process on its next cached call. A
value is JSON made of ``str``, ``int``, ``float``, ``bool``, ``None``, lists
and dicts with string keys, so it reads back exactly as it was stored; anything
else is refused when stored, naming the type and where it sits in the value.
A stored value that is not ours (another flag, a pickle, broken JSON) reads
as a miss and is logged, never decoded.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from typing import Any

logger = logging.getLogger("flask_jobtastic.cache")

#: The memcached flags of a JSON value; pymemcache's pickle serde uses bits 0-4.
FLAG_JSON = 1 << 5

#: Minimum seconds between two warnings about values that are not ours.
WARN_INTERVAL = 10.0

_ALLOWED = "str, int, float, bool, None, or lists and dicts (with str keys) of them"


class UnserializableValue(Exception):
    """Carries a refused value's error out of pymemcache, so it is not taken for an outage."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _Nothing:
    """The empty payload of ``append`` (how ``has`` asks without fetching the value)."""


NOTHING = _Nothing()


def check_json(value: Any, where: str = "value") -> None:
    """Raise unless JSON carries ``value`` unchanged: TypeError naming the type, and where.

    Exact types: a tuple would read back as a list, an int key as a str, a
    subclass (an ``IntEnum``) as its base; so each is refused, not altered.
    """
    kind = type(value)
    if value is None or kind is str or kind is int or kind is bool:
        return
    if kind is float:
        if not math.isfinite(value):
            raise ValueError(
                f"PyMemcacheCache stores JSON, which has no {value!r} ({where}); "
                "store a finite number or None"
            )
        return
    if kind is list:
        for index, item in enumerate(value):
            check_json(item, f"{where}[{index}]")
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(
                    f"PyMemcacheCache stores JSON, whose object keys are strings: {where} has "
                    f"the {type(key).__name__} key {key!r}; use str keys"
                )
            check_json(item, f"{where}[{key!r}]")
        return
    hint = "; store a list" if kind is tuple else ""
    raise TypeError(
        f"PyMemcacheCache stores values as JSON, which cannot carry {kind.__name__} "
        f"({where}){hint}; store {_ALLOWED}"
    )


def encode(value: Any) -> bytes:
    """The stored form of ``value``; refused values raise (see :func:`check_json`)."""
    check_json(value)
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
        "utf-8"
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not strict JSON")


class _Throttle:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last = -math.inf
        self._lock = threading.Lock()

    def allow(self) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.interval:
                return False
            self._last = now
            return True


class JsonSerde:
    """A pymemcache serde that writes and reads strict JSON only."""

    def __init__(self, warn_interval: float = WARN_INTERVAL) -> None:
        self._foreign = _Throttle(warn_interval)

    def serialize(self, key: str | bytes, value: Any) -> tuple[bytes, int]:
        if value is NOTHING:
            return b"", 0  # append ignores flags: memcached keeps the stored ones
        try:
            return encode(value), FLAG_JSON
        except Exception as exc:
            raise UnserializableValue(exc) from exc

    def deserialize(self, key: str | bytes, value: bytes, flags: int) -> Any:
        if flags == FLAG_JSON:
            try:
                return json.loads(value, parse_constant=_no_constant)
            except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError too
                return self._not_ours(key, flags, f"not JSON ({exc})")
        return self._not_ours(key, flags, "not stored by PyMemcacheCache (never unpickled)")

    def _not_ours(self, key: str | bytes, flags: int, why: str) -> None:
        if self._foreign.allow():
            if isinstance(key, bytes):
                key = key.decode("utf-8", "replace")
            logger.warning(
                "memcached value under %r (flags %d) is %s; read as a miss",
                key,
                flags,
                why,
            )
        return None
