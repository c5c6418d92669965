"""Cache access for herd avoidance and result caching, degrading instead of failing.

Three parts, all about talking to the cache without letting it take the app
down:

* :class:`PyMemcacheCache`, a flask-caching backend on pymemcache that turns a
  memcached outage into cache misses and one rate-limited warning;
* exception-safe helpers (:func:`cache_get`, :func:`claim_herd_key`, ...) that
  give the same guarantee over any flask-caching backend;
* :func:`describe_add_atomicity`, which says whether a backend's ``add`` can
  be trusted to elect a single winner across worker processes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import functools
import hashlib
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

from flask import Flask
from flask_caching import Cache
from flask_caching.backends.base import BaseCache
from pymemcache.client.base import normalize_server_spec
from pymemcache.client.hash import HashClient
from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownError,
)

from .cache_serde import NOTHING, JsonSerde, UnserializableValue, check_json

logger = logging.getLogger("flask_jobtastic.cache")

#: memcached rejects longer keys.
MAX_KEY_LENGTH = 250

#: memcached reads an expiry above 30 days as an absolute unix time.
MAX_RELATIVE_EXPIRY = 30 * 24 * 60 * 60

#: Minimum seconds between two warnings about the same trouble.
WARN_INTERVAL = 10.0

#: Rounds of compare-and-swap before a contended ``inc``/``dec`` gives up.
_COUNTER_ATTEMPTS = 32

#: Upper bound on immediate retries over stale pooled connections.
_MAX_RETRIES = 64

_VALID_KEY = re.compile(rf"[\x21-\x7e]{{1,{MAX_KEY_LENGTH}}}").fullmatch

ServerSpec = tuple[str, int] | str
_Method = TypeVar("_Method", bound=Callable[..., Any])


class _Failed:
    """Marker for "the command could not run", distinct from every cache answer."""

    def __repr__(self) -> str:
        return "FAILED"


_FAILED = _Failed()


class _Throttle:
    """Lets one message per topic through per interval, so an outage logs once, not per call."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[Hashable, float] = {}
        self._lock = threading.Lock()

    def allow(self, topic: Hashable) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(topic)
            if last is not None and now - last < self.interval:
                return False
            self._last[topic] = now
            return True


def _server_name(server: ServerSpec) -> str:
    if isinstance(server, tuple):
        host, port = server
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"unix:{server}"


def _classify(exc: Exception) -> str:
    """Sort a failure: "broken" (stale connection, retry), "rejected" (server said no), "down"."""
    if isinstance(
        exc,
        MemcacheUnexpectedCloseError
        | MemcacheUnknownError
        | BrokenPipeError
        | ConnectionResetError
        | ConnectionAbortedError,
    ):
        return "broken"
    if isinstance(exc, MemcacheClientError | MemcacheServerError):
        return "rejected"
    return "down"


def _idle_count(client: Any) -> int:
    pool = getattr(client, "client_pool", None)
    return len(pool.free) if pool is not None else 0


class _ServerHealth:
    """Which servers are down, shared by every thread using one client.

    A server that failed is skipped for ``dead_timeout`` seconds so callers
    do not each wait for a connect timeout; then a single caller probes it and
    a success puts it back at once.
    """

    def __init__(self, dead_timeout: float, warn_interval: float) -> None:
        self.dead_timeout = dead_timeout
        self._down_until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._throttle = _Throttle(warn_interval)

    def may_try(self, name: str) -> bool:
        if name not in self._down_until:
            return True
        now = time.monotonic()
        with self._lock:
            until = self._down_until.get(name)
            if until is None:
                return True
            if now < until:
                return False
            # This caller is the probe; the others keep failing fast meanwhile.
            self._down_until[name] = now + self.dead_timeout
            return True

    def mark_down(self, name: str, exc: Exception) -> None:
        with self._lock:
            self._down_until[name] = time.monotonic() + self.dead_timeout
        if self._throttle.allow(name):
            logger.warning(
                "memcached at %s is unreachable (%s: %s); caching and herd avoidance are "
                "degraded until it is back",
                name,
                type(exc).__name__,
                exc,
            )

    def mark_up(self, name: str) -> None:
        if name not in self._down_until:
            return
        with self._lock:
            was_down = self._down_until.pop(name, None) is not None
        if was_down:
            logger.info("memcached at %s is reachable again", name)


class _FailSoftHashClient(HashClient):
    """A HashClient that reports failures as values and keeps its hash ring fixed.

    pymemcache's own failure handling (``retry_attempts``/``dead_timeout``)
    takes a dead server out of the ring, which moves its keys to another
    server: processes that disagree about the outage then ``add`` the same key
    on different servers and both win, and the moved keys turn stale when the
    server returns. Its bookkeeping is also not thread-safe. Here a dead
    server's keys simply miss until it answers again.
    """

    def __init__(
        self,
        servers: Sequence[ServerSpec],
        *,
        dead_timeout: float,
        retry_attempts: int,
        warn_interval: float,
        **options: Any,
    ) -> None:
        super().__init__(
            servers,
            serde=JsonSerde(warn_interval),
            use_pooling=True,
            ignore_exc=False,
            default_noreply=False,
            **options,
        )
        self.dead_timeout = dead_timeout
        self.warn_interval = warn_interval
        self.broken_retries = retry_attempts
        self.health = _ServerHealth(dead_timeout, warn_interval)
        self._rejections = _Throttle(warn_interval)
        # One server: no ring to consult. pymemcache's pure-Python murmur3 would
        # otherwise cost more than the network round trip on every call.
        self._only_client = next(iter(self.clients.values())) if len(self.clients) == 1 else None
        _live_clients.add(self)

    def _get_client(self, key: str) -> Any:
        if self._only_client is not None:
            return self._only_client
        return super()._get_client(key)

    def run(self, command: str, key: str, *args: Any, **kwargs: Any) -> Any:
        """Run one keyed command; ``_FAILED`` instead of an exception when it could not run."""
        return self._run_cmd(command, key, _FAILED, *args, **kwargs)

    def flush_every_server(self) -> bool:
        """Flush all servers; True only if every one of them confirmed."""
        flushed = True
        for client in list(self.clients.values()):
            if self._safely_run_func(client, client.flush_all, _FAILED, noreply=False) is _FAILED:
                flushed = False
        return flushed

    def close(self) -> None:
        for client in list(self.clients.values()):
            with contextlib.suppress(Exception):
                client.close()

    disconnect_all = close

    def forget_inherited_state(self) -> None:
        """After fork: never share a parent's sockets (replies would interleave)."""
        self.health = _ServerHealth(self.dead_timeout, self.warn_interval)
        self._rejections = _Throttle(self.warn_interval)
        self.close()

    def _safely_run_func(
        self, client: Any, func: Callable[..., Any], default_val: Any, *args: Any, **kwargs: Any
    ) -> Any:
        name = _server_name(client.server)
        if not self.health.may_try(name):
            return default_val
        retries: int | None = None
        while True:
            try:
                result = func(*args, **kwargs)
            except UnserializableValue:
                raise
            except Exception as exc:
                kind = _classify(exc)
                if kind == "rejected":
                    self.health.mark_up(name)
                    self._note_rejection(name, func, exc)
                    return default_val
                if kind == "broken":
                    # Most likely a pooled connection from before a server restart. It
                    # has been discarded; the idle ones may be stale too, so allow one
                    # retry per idle connection on top of the configured attempts.
                    if retries is None:
                        retries = min(self.broken_retries + _idle_count(client), _MAX_RETRIES)
                    if retries > 0:
                        retries -= 1
                        continue
                self.health.mark_down(name, exc)
                with contextlib.suppress(Exception):
                    client.close()  # every pooled connection points at the dead server
                return default_val
            self.health.mark_up(name)
            return result

    def _safely_run_set_many(
        self, client: Any, values: dict[str, Any], *args: Any, **kwargs: Any
    ) -> list[str]:
        failed = self._safely_run_func(client, client.set_many, _FAILED, values, *args, **kwargs)
        return list(values) if failed is _FAILED else list(failed)

    def _note_rejection(self, name: str, func: Callable[..., Any], exc: Exception) -> None:
        command = getattr(func, "__name__", "command")
        if command in ("incr", "decr"):
            return  # expected for counters memcached cannot do; the caller falls back
        if self._rejections.allow((name, command)):
            logger.warning("memcached at %s refused %s: %s", name, command, exc)


_live_clients: weakref.WeakSet[_FailSoftHashClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_live_clients):
        with contextlib.suppress(Exception):
            client.forget_inherited_state()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _fail_soft(on_failure: Callable[..., Any]) -> Callable[[_Method], _Method]:
    """Last line of defence for a backend method: whatever goes wrong, answer a miss.

    Only a value JSON cannot carry is raised, as that is the caller's bug.
    """

    def decorate(method: _Method) -> _Method:
        @functools.wraps(method)
        def wrapper(self: PyMemcacheCache, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except UnserializableValue as exc:
                raise exc.error from None
            except Exception as exc:
                if self._unexpected.allow(method.__name__):
                    logger.warning(
                        "memcached cache %s failed unexpectedly (%s: %s); treating it as a miss",
                        method.__name__,
                        type(exc).__name__,
                        exc,
                        exc_info=True,
                    )
                return on_failure(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _none(*args: Any, **kwargs: Any) -> None:
    return None


def _false(*args: Any, **kwargs: Any) -> bool:
    return False


def _no_keys(*args: Any, **kwargs: Any) -> list[Any]:
    return []


def _nones(*keys: str) -> list[None]:
    return [None] * len(keys)


def _none_dict(*keys: str) -> dict[str, None]:
    return dict.fromkeys(keys)


def parse_servers(servers: Any) -> list[ServerSpec]:
    """Accept a list of "host:port"/"unix:/path"/(host, port), or one string of them.

    A string may hold several servers separated by commas or spaces.
    """
    if servers is None:
        servers = ["127.0.0.1:11211"]
    elif isinstance(servers, str):
        servers = [part for part in re.split(r"[,\s]+", servers) if part]
    specs: list[ServerSpec] = []
    for server in servers:
        if isinstance(server, tuple | list) and len(server) == 2:
            specs.append((str(server[0]), int(server[1])))
        elif isinstance(server, str) and server.strip():
            specs.append(normalize_server_spec(server.strip()))
        else:
            raise ValueError(f"cannot read memcached server address {server!r}")
    if not specs:
        raise ValueError("CACHE_MEMCACHED_SERVERS names no memcached server")
    return specs


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
        self.servers = [_server_name(spec) for spec in specs]
        self._unexpected = _Throttle(warn_interval)
        self._client = _FailSoftHashClient(
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

    @_fail_soft(_none)
    def get(self, key: str) -> Any:
        value = self._client.run("get", self.memcached_key(key))
        return None if value is _FAILED else value

    @_fail_soft(_nones)
    def get_many(self, *keys: str) -> list[Any]:
        if not keys:
            return []
        stored = [self.memcached_key(key) for key in keys]
        found = self._client.get_many(list(dict.fromkeys(stored)))
        return [found.get(key) for key in stored]

    @_fail_soft(_none_dict)
    def get_dict(self, *keys: str) -> dict[str, Any]:
        return dict(zip(keys, self.get_many(*keys), strict=True))

    @_fail_soft(_false)
    def set(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        expire = self._expire(timeout)
        return self._client.run("set", self.memcached_key(key), value, expire=expire) is True

    @_fail_soft(_false)
    def add(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        """Store only if absent, atomically on the server: the herd lock primitive."""
        expire = self._expire(timeout)
        return self._client.run("add", self.memcached_key(key), value, expire=expire) is True

    @_fail_soft(_no_keys)
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

    @_fail_soft(_false)
    def delete(self, key: str) -> bool:
        """True when the key existed and is now gone."""
        return self._client.run("delete", self.memcached_key(key)) is True

    @_fail_soft(_no_keys)
    def delete_many(self, *keys: str) -> list[Any]:
        """Keys now absent, whether deleted or already missing; unreachable ones are left out."""
        run = self._client.run
        return [key for key in keys if run("delete", self.memcached_key(key)) is not _FAILED]

    @_fail_soft(_false)
    def has(self, key: str) -> bool:
        # Appending nothing succeeds only for an existing key and fetches no value.
        return self._client.run("append", self.memcached_key(key), NOTHING) is True

    @_fail_soft(_false)
    def clear(self) -> bool:
        """Flush every server; this also drops keys of other prefixes and apps."""
        return self._client.flush_every_server()

    @_fail_soft(_none)
    def inc(self, key: str, delta: int = 1) -> int | None:
        return self._add_to_counter(self.memcached_key(key), delta)

    @_fail_soft(_none)
    def dec(self, key: str, delta: int = 1) -> int | None:
        return self._add_to_counter(self.memcached_key(key), -delta)

    def _add_to_counter(self, stored: str, delta: int) -> int | None:
        """Atomic counter update; a missing key starts at ``delta`` with the default timeout.

        memcached's ``incr`` is used when it can be (non-negative counters; the
        expiry is kept). Otherwise a compare-and-swap loop, which supports
        negative values and resets the expiry to the default timeout.
        """
        expire = self._expire(None)
        client = self._client
        for _ in range(_COUNTER_ATTEMPTS):
            missing = False
            if delta >= 0:
                value = client.run("incr", stored, delta)
                if isinstance(value, int):
                    return value
                missing = value is None  # else incr could not count it: use cas
            if missing:
                current = token = None
            else:
                fetched = client.run("gets", stored)
                if fetched is _FAILED:
                    return None
                current, token = fetched
                if current is None and token is not None:
                    return None  # the key holds a value that is not ours: not a counter
            if current is None:  # no such key yet: start it at delta
                added = client.run("add", stored, delta, expire=expire)
                if added is _FAILED:
                    return None
                if added:
                    return delta
                continue
            if not isinstance(current, int):
                return None
            swapped = client.run("cas", stored, current + delta, token, expire=expire)
            if swapped is _FAILED:
                return None
            if swapped:
                return current + delta
        return None


# -- exception-safe helpers over any flask-caching cache ----------------------

_helper_throttles: weakref.WeakKeyDictionary[Any, _Throttle] = weakref.WeakKeyDictionary()
_fallback_throttle = _Throttle(WARN_INTERVAL)
_helper_lock = threading.Lock()


def _warn_once_in_a_while(cache: Any, topic: str, message: str, *args: Any) -> None:
    """Warn about ``cache`` at most once per interval and topic, so outages do not flood logs."""
    try:
        with _helper_lock:
            throttle = _helper_throttles.get(cache)
            if throttle is None:
                throttle = _helper_throttles[cache] = _Throttle(WARN_INTERVAL)
        allowed = throttle.allow(topic)
    except TypeError:  # not weak-referenceable or not hashable
        allowed = _fallback_throttle.allow((topic, id(cache)))
    if allowed:
        logger.warning(message, *args)


def _backend_failed(cache: Any, operation: str, key: str, exc: Exception) -> None:
    _warn_once_in_a_while(
        cache,
        "error",
        "cache %s of %r failed (%s: %s); carrying on without the cache, so caching and "
        "herd avoidance are degraded",
        operation,
        key,
        type(exc).__name__,
        exc,
    )


def cache_get(cache: Any, key: str) -> Any | None:
    """The cached value, or None when absent or the cache fails."""
    try:
        return cache.get(key)
    except Exception as exc:
        _backend_failed(cache, "get", key, exc)
        return None


def cache_get_many(cache: Any, keys: Sequence[str]) -> list[Any | None]:
    """Values in the order of ``keys``; all None when the cache fails."""
    keys = list(keys)
    if not keys:
        return []
    try:
        values = list(cache.get_many(*keys))
    except Exception as exc:
        _backend_failed(cache, "get_many", keys[0], exc)
        return [None] * len(keys)
    if len(values) != len(keys):
        return [None] * len(keys)
    return values


def cache_set(cache: Any, key: str, value: Any, timeout: int) -> bool:
    """Store ``value`` for ``timeout`` seconds (0: forever); False when the cache fails."""
    try:
        result = cache.set(key, value, timeout=timeout)
    except Exception as exc:
        _backend_failed(cache, "set", key, exc)
        return False
    return result is None or bool(result)


def cache_add(cache: Any, key: str, value: Any, timeout: int) -> bool:
    """Store only if absent; False when present or when the cache fails."""
    try:
        return bool(cache.add(key, value, timeout=timeout))
    except Exception as exc:
        _backend_failed(cache, "add", key, exc)
        return False


def cache_delete(cache: Any, key: str) -> bool:
    """True when the key was deleted; False when absent or the cache fails."""
    try:
        return bool(cache.delete(key))
    except Exception as exc:
        _backend_failed(cache, "delete", key, exc)
        return False


def cache_delete_if_equal(cache: Any, key: str, expected: Any) -> bool:
    """Delete ``key`` only while it holds ``expected`` (e.g. our own herd lock).

    Best effort, not atomic: a get then a delete, so a value written by someone
    else between the two is deleted too. Good enough to release a lock that
    would expire anyway.
    """
    current = cache_get(cache, key)
    if current is None or current != expected:
        return False
    return cache_delete(cache, key)


def claim_herd_key(cache: Any, key: str, task_id: str, timeout: int) -> tuple[str, bool]:
    """Atomically place ``task_id`` under ``key``; returns ``(winning_task_id, we_won)``.

    If the add fails and a value exists, that value wins. If the add fails
    and nothing is readable (the key just expired, or the cache is down), the
    add is retried once; if still nothing is readable we run anyway, returning
    ``(task_id, True)`` with a warning that herd avoidance is degraded: a
    duplicate run is better than none.
    """
    for _ in range(2):
        if cache_add(cache, key, task_id, timeout):
            return task_id, True
        current = cache_get(cache, key)
        if current is not None:
            winner = current if isinstance(current, str) else str(current)
            return winner, winner == task_id
    _warn_once_in_a_while(
        cache,
        "herd",
        "could not claim or read herd key %r; running task %s without herd avoidance "
        "(duplicate runs are possible until the cache works again)",
        key,
        task_id,
    )
    return task_id, True


def refresh_herd_key(cache: Any, key: str, task_id: str, timeout: int) -> bool:
    """Give our herd key a fresh ``timeout``, only while it still names ``task_id``.

    Like :func:`cache_delete_if_equal` this is a get then a set, not atomic.
    """
    if cache_get(cache, key) != task_id:
        return False
    return cache_set(cache, key, task_id, timeout)


# -- can this backend elect one winner? ---------------------------------------


class AddAtomicity(enum.StrEnum):
    """How far a backend's ``add`` can be trusted to let exactly one caller win."""

    #: One winner across all processes and hosts sharing the server.
    ATOMIC = "atomic"
    #: One winner among the threads of one process only (in-memory cache).
    PROCESS_LOCAL = "process-local"
    #: Several callers may win (or the cache stores nothing).
    NOT_ATOMIC = "not-atomic"


_ATOMIC_BACKENDS = frozenset(
    {
        "RedisCache",
        "RedisSentinelCache",
        "RedisClusterCache",
        "MemcachedCache",
        "SASLMemcachedCache",
        "SpreadSASLMemcachedCache",
    }
)
_PROCESS_LOCAL_BACKENDS = frozenset({"SimpleCache"})
_KNOWN_LIBRARIES = ("flask_caching.", "cachelib.")


def describe_add_atomicity(backend: Any) -> AddAtomicity:
    """Classify ``backend`` (or a ``flask_caching.Cache``) by how atomic its ``add`` is.

    Subclasses inherit their base's answer; unknown backends are assumed
    ``not-atomic`` so herd avoidance is never overtrusted.
    """
    if isinstance(backend, Cache):
        backend = backend.cache
    if isinstance(backend, PyMemcacheCache):
        return AddAtomicity.ATOMIC
    for klass in type(backend).__mro__:
        if not klass.__module__.startswith(_KNOWN_LIBRARIES):
            continue
        if klass.__name__ in _ATOMIC_BACKENDS:
            return AddAtomicity.ATOMIC
        if klass.__name__ in _PROCESS_LOCAL_BACKENDS:
            return AddAtomicity.PROCESS_LOCAL
    return AddAtomicity.NOT_ATOMIC
