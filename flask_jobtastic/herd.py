"""Fail-soft cache operations and herd claims over any flask-caching cache.

A cache outage must cost users deduplication and cached answers, never the
job itself: every operation here swallows the backend's exceptions, answers
a miss, and warns once per interval per cache. The herd key of a job names
the run that computes it; identical calls made meanwhile join that run:

* :func:`claim_herd_key` claims the key for a new run, or says which run
  holds it (the caller then joins that run);
* :func:`refresh_herd_key` renews a claim while the run is alive;
* :func:`release_herd_key` gives it up as the run ends.

:func:`describe_add_atomicity` says whether a backend's ``add`` can elect a
single winner across processes at all, which herd avoidance relies on.

Works with a ``flask_caching.Cache`` or a backend (``cache.cache``) alike,
also of backends other than :class:`flask_jobtastic.cache.PyMemcacheCache`,
which do raise when their server is down.
"""

from __future__ import annotations

import enum
import logging
import threading
import weakref
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from flask_caching import Cache

from ._memcache import WARN_INTERVAL, Throttle

# The logger name the README documents for cache trouble, whichever module logs it.
logger = logging.getLogger("flask_jobtastic.cache")


class CacheLike(Protocol):
    """The part of flask-caching's API used here (``Cache`` and its backends alike)."""

    def get(self, key: str) -> Any: ...

    def get_many(self, *keys: str) -> Any: ...

    def set(self, key: str, value: Any, timeout: int | None = None) -> Any: ...

    def add(self, key: str, value: Any, timeout: int | None = None) -> Any: ...

    def delete(self, key: str) -> Any: ...


class HerdClaim(NamedTuple):
    """The outcome of :func:`claim_herd_key`; compares equal to ``(winner, won)``."""

    #: The id of the run that computes the job: ours, or the one to join.
    winner: str
    #: True when ``winner`` is the caller's own id: it must send (or run) the job.
    won: bool


# -- warnings, at most one per interval per cache and topic --------------------

_throttles: weakref.WeakKeyDictionary[Any, Throttle] = weakref.WeakKeyDictionary()
_fallback_throttle = Throttle(WARN_INTERVAL)
_throttles_lock = threading.Lock()


def _warn_once_in_a_while(cache: object, topic: str, message: str, *args: Any) -> None:
    """Warn about ``cache`` at most once per interval and topic, so outages do not flood logs."""
    try:
        with _throttles_lock:
            throttle = _throttles.get(cache)
            if throttle is None:
                throttle = _throttles[cache] = Throttle(WARN_INTERVAL)
        allowed = throttle.allow(topic)
    except TypeError:  # not weak-referenceable or not hashable
        allowed = _fallback_throttle.allow((topic, id(cache)))
    if allowed:
        logger.warning(message, *args)


def _backend_failed(cache: object, operation: str, key: str, exc: Exception) -> None:
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


# -- operations that never raise -----------------------------------------------


def cache_get(cache: CacheLike, key: str) -> Any | None:
    """The cached value, or None when absent or the cache fails."""
    try:
        return cache.get(key)
    except Exception as exc:
        _backend_failed(cache, "get", key, exc)
        return None


def cache_get_many(cache: CacheLike, keys: Sequence[str]) -> list[Any | None]:
    """Values in the order of ``keys``; all None when the cache fails or answers oddly."""
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


def cache_set(cache: CacheLike, key: str, value: Any, timeout: int) -> bool:
    """Store ``value`` for ``timeout`` seconds (0: forever); False when the cache fails.

    Backends that answer None (no success flag) count as stored.
    """
    try:
        result = cache.set(key, value, timeout=timeout)
    except Exception as exc:
        _backend_failed(cache, "set", key, exc)
        return False
    return result is None or bool(result)


def cache_add(cache: CacheLike, key: str, value: Any, timeout: int) -> bool:
    """Store only if absent; False when present or when the cache fails."""
    try:
        return bool(cache.add(key, value, timeout=timeout))
    except Exception as exc:
        _backend_failed(cache, "add", key, exc)
        return False


def cache_delete(cache: CacheLike, key: str) -> bool:
    """True when the key was deleted; False when absent or the cache fails."""
    try:
        return bool(cache.delete(key))
    except Exception as exc:
        _backend_failed(cache, "delete", key, exc)
        return False


def cache_delete_if_equal(cache: CacheLike, key: str, expected: Any) -> bool:
    """Delete ``key`` only while it holds ``expected`` (e.g. our own herd claim).

    Best effort, not atomic: a get then a delete, so a value written by someone
    else between the two is deleted too. Good enough to release a claim that
    would expire anyway.
    """
    current = cache_get(cache, key)
    if current is None or current != expected:
        return False
    return cache_delete(cache, key)


# -- herd claims -----------------------------------------------------------------


def claim_herd_key(cache: CacheLike, key: str, task_id: str, timeout: int) -> HerdClaim:
    """Atomically place ``task_id`` under ``key``, or learn which run holds it.

    Returns ``(winner, won)``: ``won`` when the key now names ``task_id`` (a
    fresh claim, or the caller's own earlier one); otherwise ``winner`` is the
    run to join. If the add fails and nothing is readable (the key just
    expired, or the cache is down), the add is retried once; if still nothing
    is readable we run anyway, returning ``(task_id, True)`` with a warning
    that herd avoidance is degraded: a duplicate run is better than none.
    """
    for _ in range(2):
        if cache_add(cache, key, task_id, timeout):
            return HerdClaim(task_id, True)
        current = cache_get(cache, key)
        if current is not None:
            winner = current if isinstance(current, str) else str(current)
            return HerdClaim(winner, winner == task_id)
    _warn_once_in_a_while(
        cache,
        "herd",
        "could not claim or read herd key %r; running task %s without herd avoidance "
        "(duplicate runs are possible until the cache works again)",
        key,
        task_id,
    )
    return HerdClaim(task_id, True)


def refresh_herd_key(cache: CacheLike, key: str, task_id: str, timeout: int) -> bool:
    """Renew our claim for a fresh ``timeout``, only while the key still names ``task_id``.

    A claim that expired and was taken by another run stays theirs. Like
    :func:`cache_delete_if_equal` this is a get then a set, not atomic.
    """
    if cache_get(cache, key) != task_id:
        return False
    return cache_set(cache, key, task_id, timeout)


def release_herd_key(cache: CacheLike, key: str, task_id: str, *, held: bool = False) -> bool:
    """Give up the claim of run ``task_id``; True when the key was deleted.

    The key is deleted only while it still holds ``task_id``, so a run whose
    claim expired never frees the claim of the run that took over. ``held``
    means the caller knows the claim is still its own (it kept renewing it
    until now): a plain delete then saves the read.
    """
    if held:
        return cache_delete(cache, key)
    return cache_delete_if_equal(cache, key, task_id)


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
        "PyMemcacheCache",  # ours: memcached's add, on a hash ring that never moves keys
    }
)
_PROCESS_LOCAL_BACKENDS = frozenset({"SimpleCache"})
# Matched by module name rather than imported: cache.py re-exports this module.
_KNOWN_LIBRARIES = ("flask_caching.", "cachelib.", "flask_jobtastic.cache")


def describe_add_atomicity(backend: object) -> AddAtomicity:
    """Classify ``backend`` (or a ``flask_caching.Cache``) by how atomic its ``add`` is.

    Subclasses inherit their base's answer; unknown backends are assumed
    ``not-atomic`` so herd avoidance is never overtrusted.
    """
    if isinstance(backend, Cache):
        backend = backend.cache
    for klass in type(backend).__mro__:
        if not klass.__module__.startswith(_KNOWN_LIBRARIES):
            continue
        if klass.__name__ in _ATOMIC_BACKENDS:
            return AddAtomicity.ATOMIC
        if klass.__name__ in _PROCESS_LOCAL_BACKENDS:
            return AddAtomicity.PROCESS_LOCAL
    return AddAtomicity.NOT_ATOMIC
