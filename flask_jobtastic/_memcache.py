"""The pymemcache client under :class:`flask_jobtastic.cache.PyMemcacheCache`.

Private: how to talk to memcached without letting an outage take the app
down. The backend in ``cache.py`` only maps flask-caching's API onto
:class:`FailSoftHashClient`; everything about sockets, dead servers, retries
over stale pooled connections and forked workers lives here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol, TypeVar

from pymemcache.client.base import normalize_server_spec  # type: ignore[import-untyped]
from pymemcache.client.hash import HashClient  # type: ignore[import-untyped]
from pymemcache.exceptions import (  # type: ignore[import-untyped]
    MemcacheClientError,
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownError,
)

from .cache_serde import JsonSerde, UnserializableValue

# The logger name the README documents for cache trouble, whichever module logs it.
logger = logging.getLogger("flask_jobtastic.cache")

#: Minimum seconds between two warnings about the same trouble.
WARN_INTERVAL = 10.0

#: Upper bound on immediate retries over stale pooled connections.
_MAX_RETRIES = 64

ServerSpec = tuple[str, int] | str
_Method = TypeVar("_Method", bound=Callable[..., Any])


class Failed:
    """Marker for "the command could not run", distinct from every cache answer."""

    def __repr__(self) -> str:
        return "FAILED"


#: What :meth:`FailSoftHashClient.run` answers when memcached could not be asked.
FAILED = Failed()


class Throttle:
    """Lets one message per topic through per interval, so an outage logs once, not per call."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[Hashable, float] = {}
        self._lock = threading.Lock()

    def allow(self, topic: Hashable) -> bool:
        """True for the first call per topic in each interval."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(topic)
            if last is not None and now - last < self.interval:
                return False
            self._last[topic] = now
            return True


def server_name(server: ServerSpec) -> str:
    """A server as log messages show it: ``host:port``, ``[v6]:port`` or ``unix:/path``."""
    if isinstance(server, tuple):
        host, port = server
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"unix:{server}"


def parse_servers(servers: Any) -> list[ServerSpec]:
    """Accept a list of "host:port"/"unix:/path"/(host, port), or one string of them.

    A string may hold several servers separated by commas or spaces, as an
    environment variable would.
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


class ServerHealth:
    """Which servers are down, shared by every thread using one client.

    A server that failed is skipped for ``dead_timeout`` seconds so callers
    do not each wait for a connect timeout; then a single caller probes it and
    a success puts it back at once.
    """

    def __init__(self, dead_timeout: float, warn_interval: float) -> None:
        self.dead_timeout = dead_timeout
        self._down_until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._throttle = Throttle(warn_interval)

    def may_try(self, name: str) -> bool:
        """False while ``name`` is written off; True for the one caller that probes it."""
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
        """Write ``name`` off for ``dead_timeout`` seconds; warn once per interval."""
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
        """``name`` answered: use it again, and say so if it had been down."""
        if name not in self._down_until:
            return
        with self._lock:
            was_down = self._down_until.pop(name, None) is not None
        if was_down:
            logger.info("memcached at %s is reachable again", name)


class FailSoftHashClient(HashClient):  # type: ignore[misc]  # pymemcache has no type hints
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
        self.health = ServerHealth(dead_timeout, warn_interval)
        self._rejections = Throttle(warn_interval)
        # One server: no ring to consult. pymemcache's pure-Python murmur3 would
        # otherwise cost more than the network round trip on every call.
        self._only_client = next(iter(self.clients.values())) if len(self.clients) == 1 else None
        _live_clients.add(self)

    def _get_client(self, key: str) -> Any:
        if self._only_client is not None:
            return self._only_client
        return super()._get_client(key)

    def run(self, command: str, key: str, *args: Any, **kwargs: Any) -> Any:
        """Run one keyed command; ``FAILED`` instead of an exception when it could not run."""
        return self._run_cmd(command, key, FAILED, *args, **kwargs)

    def flush_every_server(self) -> bool:
        """Flush all servers; True only if every one of them confirmed."""
        flushed = True
        for client in list(self.clients.values()):
            if self._safely_run_func(client, client.flush_all, FAILED, noreply=False) is FAILED:
                flushed = False
        return flushed

    def close(self) -> None:
        """Close every pooled connection, ignoring servers that are already gone."""
        for client in list(self.clients.values()):
            with contextlib.suppress(Exception):
                client.close()

    disconnect_all = close

    def forget_inherited_state(self) -> None:
        """After fork: never share a parent's sockets (replies would interleave)."""
        self.health = ServerHealth(self.dead_timeout, self.warn_interval)
        self._rejections = Throttle(self.warn_interval)
        self.close()

    def _safely_run_func(
        self, client: Any, func: Callable[..., Any], default_val: Any, *args: Any, **kwargs: Any
    ) -> Any:
        """pymemcache's hook around every command: here, health checks and retries."""
        name = server_name(client.server)
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
                if kind == "broken":
                    # Most likely a pooled connection from before a server restart. It
                    # has been discarded; the idle ones may be stale too, so allow one
                    # retry per idle connection on top of the configured attempts.
                    if retries is None:
                        retries = min(self.broken_retries + _idle_count(client), _MAX_RETRIES)
                    if retries > 0:
                        retries -= 1
                        continue
                self._failed(client, name, func, exc, kind)
                return default_val
            self.health.mark_up(name)
            return result

    def _failed(
        self, client: Any, name: str, func: Callable[..., Any], exc: Exception, kind: str
    ) -> None:
        """Record a command that did not run: refused (server fine) or server down."""
        if kind == "rejected":
            self.health.mark_up(name)
            self._note_rejection(name, func, exc)
            return
        self.health.mark_down(name, exc)
        with contextlib.suppress(Exception):
            client.close()  # every pooled connection points at the dead server

    def _safely_run_set_many(
        self, client: Any, values: dict[str, Any], *args: Any, **kwargs: Any
    ) -> list[str]:
        failed = self._safely_run_func(client, client.set_many, FAILED, values, *args, **kwargs)
        return list(values) if failed is FAILED else list(failed)

    def _note_rejection(self, name: str, func: Callable[..., Any], exc: Exception) -> None:
        command = getattr(func, "__name__", "command")
        if command in ("incr", "decr"):
            return  # expected for counters memcached cannot do; the caller falls back
        if self._rejections.allow((name, command)):
            logger.warning("memcached at %s refused %s: %s", name, command, exc)


_live_clients: weakref.WeakSet[FailSoftHashClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """Prefork workers: each child starts with fresh connections of its own."""
    for client in list(_live_clients):
        with contextlib.suppress(Exception):
            client.forget_inherited_state()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Guarded(Protocol):
    """What :func:`fail_soft` needs of the object whose methods it wraps."""

    _unexpected: Throttle


def fail_soft(on_failure: Callable[..., Any]) -> Callable[[_Method], _Method]:
    """Last line of defence for a backend method: whatever goes wrong, answer a miss.

    ``on_failure`` gets the method's arguments and returns the miss. Only a
    value JSON cannot carry is raised, as that is the caller's bug.
    """

    def decorate(method: _Method) -> _Method:
        @functools.wraps(method)
        def wrapper(self: _Guarded, *args: Any, **kwargs: Any) -> Any:
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


# Misses for fail_soft, one per shape of answer.


def answer_none(*args: Any, **kwargs: Any) -> None:
    return None


def answer_false(*args: Any, **kwargs: Any) -> bool:
    return False


def answer_no_keys(*args: Any, **kwargs: Any) -> list[Any]:
    return []


def answer_nones(*keys: str) -> list[None]:
    return [None] * len(keys)


def answer_none_dict(*keys: str) -> dict[str, None]:
    return dict.fromkeys(keys)
