"""``flask_jobtastic.cache.PyMemcacheCache``: a flask-caching backend that survives memcached.

The class is public (``CACHE_TYPE = "flask_jobtastic.cache.PyMemcacheCache"``);
the client machinery under it lives in :mod:`flask_jobtastic._memcache`, and
the fail-soft operations and herd claims that work over any flask-caching
cache in :mod:`flask_jobtastic.herd`.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import re
import time
import weakref
from typing import Any, Literal

from flask import Flask
from flask_caching.backends.base import BaseCache

from ._memcache import (
    FAILED,
    WARN_INTERVAL,
    FailSoftHashClient,
    Throttle,
    answer_false,
    answer_no_keys,
    answer_none,
    answer_none_dict,
    answer_nones,
    fail_soft,
    logger,
    parse_servers,
    server_name,
)
from .cache_serde import NOTHING, UnserializableValue, check_json

__all__ = ["MAX_KEY_LENGTH", "MAX_RELATIVE_EXPIRY", "WARN_INTERVAL", "PyMemcacheCache", "logger"]

#: memcached rejects longer keys.
MAX_KEY_LENGTH = 250

#: memcached reads an expiry above 30 days as an absolute unix time.
MAX_RELATIVE_EXPIRY = 30 * 24 * 60 * 60

#: Rounds of compare-and-swap before a contended ``inc``/``dec`` gives up.
_COUNTER_ATTEMPTS = 32

_VALID_KEY = re.compile(rf"[\x21-\x7e]{{1,{MAX_KEY_LENGTH}}}").fullmatch


class _Again(enum.Enum):
    """A counter round lost a race: try another."""

    AGAIN = enum.auto()


_AGAIN: Literal[_Again.AGAIN] = _Again.AGAIN


class PyMemcacheCache(BaseCache):
    """flask-caching backend on pymemcache that survives memcached outages.

    ``CACHE_TYPE = "flask_jobtastic.cache.PyMemcacheCache"`` with servers in
    ``CACHE_MEMCACHED_SERVERS``. Keys are spread over the servers by
    rendezvous hashing, connections are pooled per server, values are stored as
    strict JSON (see :mod:`flask_jobtastic.cache_serde`): a value JSON cannot
    carry raises TypeError, and a stored value that is not JSON (a pickle
    planted by someone who can reach memcached) reads as a miss, never decoded.

    When a server is down, reads miss and writes report failure, with one
    WARNING per server per ``warn_interval``; it is probed again every
    ``dead_timeout`` seconds and used as soon as it answers. Keys memcached
    cannot store (non-ASCII, whitespace, too long) are replaced by a SHA-256
    digest, so any string works as a key.

    ``CACHE_OPTIONS`` may set ``connect_timeout``/``timeout`` (seconds, 0.5),
    ``dead_timeout`` (1.0), ``retry_attempts`` (immediate retries on a broken
    connection, 1), ``max_pool_size``, ``pool_idle_timeout``, ``warn_interval``
    and any other :class:`pymemcache.HashClient` argument such as
    ``tls_context``. ``ignore_delete_many_errors`` is accepted but
    ``delete_many`` never raises: surviving an outage is this backend's point.
    """

    def __init__(
        self,
        servers: Any = None,
        default_timeout: int = 300,
        key_prefix: str | None = None,
        *,
        connect_timeout: float = 0.5,
        timeout: float = 0.5,
        dead_timeout: float = 1.0,
        retry_attempts: int = 1,
        max_pool_size: int | None = None,
        pool_idle_timeout: int = 0,
        no_delay: bool = True,
        warn_interval: float = WARN_INTERVAL,
        ignore_delete_many_errors: bool = True,
        **client_options: Any,
    ) -> None:
        super().__init__(
            default_timeout=default_timeout,
            ignore_delete_many_errors=ignore_delete_many_errors,
        )
        self.key_prefix = key_prefix or ""
        specs = parse_servers(servers)
        #: Server addresses as shown in log messages.
        self.servers = [server_name(spec) for spec in specs]
        self._unexpected = Throttle(warn_interval)
        self._client = FailSoftHashClient(
            specs,
            dead_timeout=dead_timeout,
            retry_attempts=retry_attempts,
            warn_interval=warn_interval,
            connect_timeout=connect_timeout,
            timeout=timeout,
            max_pool_size=max_pool_size,
            pool_idle_timeout=pool_idle_timeout,
            no_delay=no_delay,
            **client_options,
        )
        # Close pooled sockets even if the app never calls close().
        self._finalizer = weakref.finalize(self, self._client.close)

    @classmethod
    def factory(
        cls,
        app: Flask,
        config: dict[str, Any],
        args: list[Any],
        kwargs: dict[str, Any],
    ) -> PyMemcacheCache:
        options = dict(kwargs)
        options.setdefault("key_prefix", config.get("CACHE_KEY_PREFIX"))
        if not args:
            options.setdefault("servers", config.get("CACHE_MEMCACHED_SERVERS"))
        return cls(*args, **options)

    def close(self) -> None:
        """Close every pooled connection; the cache reconnects if used again."""
        self._client.close()

    # -- keys and timeouts -------------------------------------------------

    def memcached_key(self, key: str) -> str:
        """The key as stored in memcached: prefixed, or hashed when not storable."""
        full = f"{self.key_prefix}{key}"
        if _VALID_KEY(full):
            return full
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        hashed = f"{self.key_prefix}sha256:{digest}"
        if _VALID_KEY(hashed):
            return hashed
        return "sha256:" + hashlib.sha256(full.encode("utf-8", "surrogatepass")).hexdigest()

    def _expire(self, timeout: int | dt.timedelta | None) -> int:
        seconds = self._normalize_timeout(timeout)
        if seconds == 0:
            return 0  # never expires
        if seconds < 0:
            return -1  # memcached: already expired
        if seconds > MAX_RELATIVE_EXPIRY:
            return int(time.time()) + seconds
        return seconds

    # -- the flask-caching API ---------------------------------------------

    @fail_soft(answer_none)
    def get(self, key: str) -> Any:
        value = self._client.run("get", self.memcached_key(key))
        return None if value is FAILED else value

    @fail_soft(answer_nones)
    def get_many(self, *keys: str) -> list[Any]:
        if not keys:
            return []
        stored = [self.memcached_key(key) for key in keys]
        found = self._client.get_many(list(dict.fromkeys(stored)))
        return [found.get(key) for key in stored]

    @fail_soft(answer_none_dict)
    def get_dict(self, *keys: str) -> dict[str, Any]:
        return dict(zip(keys, self.get_many(*keys), strict=True))

    @fail_soft(answer_false)
    def set(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        expire = self._expire(timeout)
        return self._client.run("set", self.memcached_key(key), value, expire=expire) is True

    @fail_soft(answer_false)
    def add(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        """Store only if absent, atomically on the server: the herd lock primitive."""
        expire = self._expire(timeout)
        return self._client.run("add", self.memcached_key(key), value, expire=expire) is True

    @fail_soft(answer_no_keys)
    def set_many(
        self, mapping: dict[str, Any], timeout: int | dt.timedelta | None = None
    ) -> list[Any]:
        if not mapping:
            return []
        for key, value in mapping.items():  # all or nothing, whichever server holds a key
            try:
                check_json(value, f"mapping[{key!r}]")
            except (TypeError, ValueError) as exc:
                raise UnserializableValue(exc) from exc
        originals = {self.memcached_key(key): key for key in mapping}
        values = {stored: mapping[key] for stored, key in originals.items()}
        failed = set(self._client.set_many(values, expire=self._expire(timeout)))
        return [key for stored, key in originals.items() if stored not in failed]

    @fail_soft(answer_false)
    def delete(self, key: str) -> bool:
        """True when the key existed and is now gone."""
        return self._client.run("delete", self.memcached_key(key)) is True

    @fail_soft(answer_no_keys)
    def delete_many(self, *keys: str) -> list[Any]:
        """Keys now absent, whether deleted or already missing; unreachable ones are left out."""
        run = self._client.run
        return [key for key in keys if run("delete", self.memcached_key(key)) is not FAILED]

    @fail_soft(answer_false)
    def has(self, key: str) -> bool:
        # Appending nothing succeeds only for an existing key and fetches no value.
        return self._client.run("append", self.memcached_key(key), NOTHING) is True

    @fail_soft(answer_false)
    def clear(self) -> bool:
        """Flush every server; this also drops keys of other prefixes and apps."""
        return self._client.flush_every_server()

    @fail_soft(answer_none)
    def inc(self, key: str, delta: int = 1) -> int | None:
        return self._add_to_counter(self.memcached_key(key), delta)

    @fail_soft(answer_none)
    def dec(self, key: str, delta: int = 1) -> int | None:
        return self._add_to_counter(self.memcached_key(key), -delta)

    def _add_to_counter(self, stored: str, delta: int) -> int | None:
        """Atomic counter update; a missing key starts at ``delta`` with the default timeout.

        memcached's ``incr`` is used when it can be (non-negative counters; the
        expiry is kept). Otherwise a compare-and-swap loop, which supports
        negative values and resets the expiry to the default timeout. None when
        the key is not a counter, memcached cannot be reached, or every round
        lost a race.
        """
        expire = self._expire(None)
        for _ in range(_COUNTER_ATTEMPTS):
            outcome = self._counter_round(stored, delta, expire)
            if outcome is not _AGAIN:
                return outcome
        return None

    def _counter_round(self, stored: str, delta: int, expire: int) -> int | None | _Again:
        """One attempt: ``incr``, else ``gets`` then ``cas``; ``_AGAIN`` when it lost a race."""
        client = self._client
        if delta >= 0:
            value = client.run("incr", stored, delta)
            if isinstance(value, int):
                return value
            if value is None:  # no such key
                return self._start_counter(stored, delta, expire)
            # else incr could not count it (negative, or memcached refused): use cas
        fetched = client.run("gets", stored)
        if fetched is FAILED:
            return None
        current, token = fetched
        if current is None:
            if token is not None:
                return None  # the key holds a value that is not ours: not a counter
            return self._start_counter(stored, delta, expire)
        if not isinstance(current, int):
            return None
        swapped = client.run("cas", stored, current + delta, token, expire=expire)
        if swapped is FAILED:
            return None
        return current + delta if swapped else _AGAIN

    def _start_counter(self, stored: str, delta: int, expire: int) -> int | None | _Again:
        """A missing counter starts at ``delta``, unless another caller started it first."""
        added = self._client.run("add", stored, delta, expire=expire)
        if added is FAILED:
            return None
        return delta if added else _AGAIN
