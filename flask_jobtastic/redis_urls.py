"""Redis clients for the job registry: from a URL, or like Celery's Redis result backend.

The URLs are the ones Celery's result backend takes: ``redis://``, ``rediss://``
(TLS), ``sentinel://host:26379;sentinel://host2:26379/1`` (Redis Sentinel), and
redis-py's ``unix://``. A Sentinel client asks the Sentinels for the master's
address on every new connection (redis-py's ``Sentinel.master_for``), so it
follows a failover.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import redis
from redis.connection import parse_url
from redis.sentinel import Sentinel, SentinelManagedSSLConnection

from .errors import ConfigurationError

#: URL schemes of a single Redis server.
SERVER_SCHEMES = ("redis://", "rediss://", "unix://")
SENTINEL_SCHEME = "sentinel://"
#: Every URL scheme the registry takes.
REDIS_SCHEMES = (*SERVER_SCHEMES, SENTINEL_SCHEME)

#: Celery's URL chunk separator in a ``sentinel://`` URL.
SENTINEL_SEPARATOR = ";"
SENTINEL_PORT = 26379

_CERT_REQS = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
    "cert_none": ssl.CERT_NONE,
    "cert_optional": ssl.CERT_OPTIONAL,
    "cert_required": ssl.CERT_REQUIRED,
}


def is_redis_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(REDIS_SCHEMES)


def is_sentinel_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SENTINEL_SCHEME)


def cert_reqs(value: Any) -> ssl.VerifyMode:
    """``ssl_cert_reqs`` as an ``ssl`` constant, in Celery's spellings or redis-py's."""
    if isinstance(value, int):
        return ssl.VerifyMode(value)
    found = _CERT_REQS.get(str(value).lower())
    if found is None:
        raise ConfigurationError(
            f"ssl_cert_reqs must be 'required', 'optional' or 'none' (or CERT_REQUIRED, "
            f"CERT_OPTIONAL, CERT_NONE), got {value!r}"
        )
    return found


def sentinel_hosts(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The Sentinels' addresses, and the master's db, username and password.

    Like Celery, the master's db and credentials come from the first chunk.
    """
    hosts: list[tuple[str, int]] = []
    params: dict[str, Any] = {}
    for index, chunk in enumerate(url.split(SENTINEL_SEPARATOR)):
        chunk = chunk.strip()
        if not chunk.startswith(SENTINEL_SCHEME):
            raise ConfigurationError(
                f"each part of a Sentinel URL must start with sentinel://, got {chunk!r}"
            )
        parts: dict[str, Any] = parse_url("redis://" + chunk[len(SENTINEL_SCHEME) :])  # type: ignore[no-untyped-call]
        hosts.append((parts.get("host") or "localhost", int(parts.get("port") or SENTINEL_PORT)))
        if index == 0:
            params = {k: parts[k] for k in ("db", "username", "password") if parts.get(k)}
    return hosts, params


def sentinel_client(
    url: str,
    master_name: str | None,
    transport_options: Mapping[str, Any] | None = None,
    use_ssl: Mapping[str, Any] | None = None,
) -> redis.Redis:
    """A client of the master ``master_name`` the Sentinels of ``url`` name.

    ``transport_options`` are Celery's ``result_backend_transport_options``
    (``sentinel_kwargs``, ``min_other_sentinels``); ``use_ssl`` its
    ``redis_backend_use_ssl``, which puts the master connections on TLS.
    """
    if not master_name:
        raise ConfigurationError(
            "a sentinel:// registry needs the master's name: set CELERY's "
            "result_backend_transport_options={'master_name': ...} or "
            "JOBTASTIC_REGISTRY_MASTER_NAME"
        )
    options = dict(transport_options or {})
    hosts, params = sentinel_hosts(url)
    if use_ssl:
        params.update(use_ssl)
        params["connection_class"] = SentinelManagedSSLConnection
        if "ssl_cert_reqs" in params:
            params["ssl_cert_reqs"] = cert_reqs(params["ssl_cert_reqs"])
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        hosts,
        min_other_sentinels=int(options.get("min_other_sentinels", 0)),
        sentinel_kwargs=options.get("sentinel_kwargs") or {},
        **params,
    )
    client: redis.Redis = sentinel.master_for(master_name)  # type: ignore[no-untyped-call]
    return client


def tls_client(url: str, use_ssl: Mapping[str, Any] | None = None) -> redis.Redis:
    """A client for a ``rediss://`` URL; TLS settings it leaves out come from ``use_ssl``.

    ``ssl_cert_reqs`` may be spelt as Celery documents it (``CERT_REQUIRED``)
    or as redis-py does (``required``).
    """
    params: dict[str, Any] = dict(use_ssl or {})
    params.update(parse_url(url))  # type: ignore[no-untyped-call]
    if "ssl_cert_reqs" in params:
        params["ssl_cert_reqs"] = cert_reqs(params["ssl_cert_reqs"])
    return redis.Redis(connection_pool=redis.ConnectionPool(**params))


def client_from_url(
    url: str,
    *,
    master_name: str | None = None,
    transport_options: Mapping[str, Any] | None = None,
    use_ssl: Mapping[str, Any] | None = None,
) -> redis.Redis:
    """A client for any URL of :data:`REDIS_SCHEMES` (see :func:`sentinel_client`)."""
    if is_sentinel_url(url):
        return sentinel_client(url, master_name, transport_options, use_ssl)
    if url.startswith("rediss://"):
        return tls_client(url, use_ssl)
    if not url.startswith(SERVER_SCHEMES):
        raise ConfigurationError(f"not a Redis URL: {url!r}")
    return redis.Redis.from_url(url)


def client_like_backend(backend: Any) -> redis.Redis:
    """A client of its own on the server Celery's Redis ``backend`` uses, with its settings.

    The backend's parsed connection parameters carry what its URL and
    settings say (TLS from ``rediss://`` or ``redis_backend_use_ssl``,
    credentials, timeouts); a Sentinel backend's pool asks its Sentinels for
    the master.
    """
    from celery.backends.redis import SentinelBackend

    params = dict(backend.connparams)
    if isinstance(backend, SentinelBackend):
        pool = backend._get_pool(**params)  # type: ignore[attr-defined]  # a master_for pool
    else:
        pool = redis.ConnectionPool(**params)
    return redis.Redis(connection_pool=pool)


def server_of(url: str, master_name: str | None = None) -> tuple[Any, ...]:
    """Where a Redis URL points, whatever its database (pub/sub ignores databases).

    A Sentinel URL is its Sentinels and the master's name.
    """
    if is_sentinel_url(url):
        hosts, _ = sentinel_hosts(url)
        return ("sentinel", frozenset(hosts), master_name)
    parts: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    return ("server", parts.get("host", "localhost"), parts.get("port", 6379), parts.get("path"))


def same_server(first: tuple[Any, ...], second: tuple[Any, ...]) -> bool:
    """Whether two :func:`server_of` answers are one Redis server.

    Two Sentinel URLs are, when they name the same master and share a
    Sentinel. A Sentinel URL and a server URL cannot be told apart without
    asking the Sentinels: they count as different (the caller then polls).
    """
    if first[0] == second[0] == "sentinel":
        return bool(first[2] == second[2] and first[1] & second[1])
    return first == second


__all__ = [
    "REDIS_SCHEMES",
    "SENTINEL_SCHEME",
    "SERVER_SCHEMES",
    "cert_reqs",
    "client_from_url",
    "client_like_backend",
    "is_redis_url",
    "is_sentinel_url",
    "same_server",
    "sentinel_client",
    "sentinel_hosts",
    "server_of",
    "tls_client",
]
