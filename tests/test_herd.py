"""Fail-soft cache operations and herd claims, on real memcached and Redis servers.

Claims go through flask-caching exactly as the extension uses them: a ``Cache``
on our PyMemcacheCache, and on flask-caching's own RedisCache (which raises
when its server is down, unlike ours).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cachelib
import pytest
from flask import Flask
from flask_caching import Cache
from flask_caching.backends.rediscache import RedisCache
from flask_caching.backends.simplecache import SimpleCache

from flask_jobtastic.cache import PyMemcacheCache
from flask_jobtastic.herd import (
    AddAtomicity,
    HerdClaim,
    cache_add,
    cache_delete,
    cache_delete_if_equal,
    cache_get,
    cache_get_many,
    cache_set,
    claim_herd_key,
    describe_add_atomicity,
    refresh_herd_key,
    release_herd_key,
)
from tests.caches import BACKEND, MakeCache, wait_for, warnings_from
from tests.rig import redis_url
from tests.servers import MemcachedServer, RedisServer

#: A Redis database none of the suite's other users touch (0-2: broker, results, counters).
CACHE_DB = 3


def redis_cache(server: RedisServer) -> Cache:
    """flask-caching's RedisCache on ``server``, under a key prefix of its own."""
    app = Flask(__name__)
    return Cache(
        app,
        config={
            "CACHE_TYPE": "RedisCache",
            "CACHE_REDIS_URL": redis_url(server, CACHE_DB),
            "CACHE_KEY_PREFIX": f"t{uuid.uuid4().hex[:10]}:",
        },
    )


def close_redis_cache(cache: Cache) -> None:
    for client in (cache.cache._read_client, cache.cache._write_client):
        client.connection_pool.disconnect()


@pytest.fixture(params=["memcached", "redis"])
def herd_cache(
    request: pytest.FixtureRequest,
    memcached: MemcachedServer,
    make_cache: MakeCache,
    redis_server: RedisServer,
) -> Iterator[Cache]:
    """A Cache as the extension is given one: on PyMemcacheCache, then on RedisCache."""
    if request.param == "memcached":
        yield make_cache([memcached.address])
        return
    cache = redis_cache(redis_server)
    yield cache
    close_redis_cache(cache)


# -- claim and join --------------------------------------------------------------


def test_claim_of_a_free_key_wins_and_stores_the_id(herd_cache: Cache) -> None:
    claim = claim_herd_key(herd_cache, "herd", "run-1", 30)
    assert claim == HerdClaim(winner="run-1", won=True)
    assert claim == ("run-1", True)  # still the (winner, won) pair callers unpack
    assert cache_get(herd_cache, "herd") == "run-1"


def test_a_second_claim_joins_the_winner(herd_cache: Cache) -> None:
    assert claim_herd_key(herd_cache, "herd", "run-1", 30).won
    joined = claim_herd_key(herd_cache, "herd", "run-2", 30)
    assert joined.winner == "run-1" and joined.won is False
    assert claim_herd_key(herd_cache, "herd", "run-3", 30) == ("run-1", False)
    assert cache_get(herd_cache, "herd") == "run-1"  # joining never overwrites
    assert claim_herd_key(herd_cache, "herd", "run-1", 30) == ("run-1", True)  # its own


def test_concurrent_claims_elect_one_run_the_others_join(herd_cache: Cache) -> None:
    barrier = threading.Barrier(16)

    def claim(task_id: str) -> HerdClaim:
        barrier.wait()
        return claim_herd_key(herd_cache, "contended", task_id, 30)

    with ThreadPoolExecutor(max_workers=16) as pool:
        claims = list(pool.map(claim, [f"run-{i}" for i in range(16)]))
    winners = {c.winner for c in claims}
    assert len(winners) == 1
    assert sum(c.won for c in claims) == 1
    winner = winners.pop()
    assert next(c for c in claims if c.won).winner == winner
    assert cache_get(herd_cache, "contended") == winner


# -- renew -----------------------------------------------------------------------


def test_renew_extends_only_a_claim_that_still_holds_our_id(herd_cache: Cache) -> None:
    assert claim_herd_key(herd_cache, "renewed", "run-1", 1).won
    assert claim_herd_key(herd_cache, "left", "run-1", 1).won
    assert refresh_herd_key(herd_cache, "renewed", "run-2", 30) is False  # not run-2's
    assert refresh_herd_key(herd_cache, "renewed", "run-1", 30) is True

    wait_for(lambda: cache_get(herd_cache, "left") is None, timeout=4)
    assert cache_get(herd_cache, "renewed") == "run-1"  # outlived its first timeout
    assert refresh_herd_key(herd_cache, "left", "run-1", 30) is False  # gone: not recreated
    assert cache_get(herd_cache, "left") is None


def test_a_run_whose_claim_expired_neither_renews_nor_releases_the_next(
    herd_cache: Cache,
) -> None:
    assert claim_herd_key(herd_cache, "herd", "run-1", 1).won
    wait_for(lambda: cache_get(herd_cache, "herd") is None, timeout=4)
    assert claim_herd_key(herd_cache, "herd", "run-2", 30) == ("run-2", True)

    assert refresh_herd_key(herd_cache, "herd", "run-1", 30) is False
    assert release_herd_key(herd_cache, "herd", "run-1") is False
    assert cache_get(herd_cache, "herd") == "run-2"
    assert claim_herd_key(herd_cache, "herd", "run-3", 30) == ("run-2", False)


# -- release ---------------------------------------------------------------------


def test_release_deletes_only_our_own_claim(herd_cache: Cache) -> None:
    assert claim_herd_key(herd_cache, "herd", "run-1", 30).won
    assert release_herd_key(herd_cache, "herd", "run-2") is False  # another run's claim
    assert cache_get(herd_cache, "herd") == "run-1"

    assert release_herd_key(herd_cache, "herd", "run-1") is True
    assert cache_get(herd_cache, "herd") is None
    assert release_herd_key(herd_cache, "herd", "run-1") is False  # already released
    assert claim_herd_key(herd_cache, "herd", "run-2", 30) == ("run-2", True)  # free again


def test_release_of_a_held_claim_is_a_plain_delete(herd_cache: Cache) -> None:
    assert claim_herd_key(herd_cache, "herd", "run-1", 30).won
    assert release_herd_key(herd_cache, "herd", "run-1", held=True) is True
    assert cache_get(herd_cache, "herd") is None
    assert release_herd_key(herd_cache, "herd", "run-1", held=True) is False  # nothing left

    # held=True is the caller's word that the claim is its own: it is not read
    # first, so a wrong word frees another run's claim. Hence "held" only for a
    # run that renewed its claim until now.
    assert claim_herd_key(herd_cache, "herd", "run-2", 30).won
    assert release_herd_key(herd_cache, "herd", "run-1", held=True) is True
    assert cache_get(herd_cache, "herd") is None


@pytest.mark.parametrize("backend", ["memcached", "redis"])
def test_renew_and_release_degrade_when_the_cache_is_down(
    backend: str, make_cache: MakeCache, caplog: pytest.LogCaptureFixture
) -> None:
    server: MemcachedServer | RedisServer
    if backend == "memcached":
        server = MemcachedServer()
        server.start()
        cache = make_cache([server.address])
    else:
        server = RedisServer()
        server.start()
        cache = redis_cache(server)
    try:
        assert claim_herd_key(cache, "herd", "run-1", 30).won
        server.kill()
        assert refresh_herd_key(cache, "herd", "run-1", 30) is False
        assert release_herd_key(cache, "herd", "run-1") is False
        assert release_herd_key(cache, "herd", "run-1", held=True) is False
    finally:
        server.close()
    messages = warnings_from(caplog)
    assert len(messages) == 1, messages  # one warning per outage, not one per call
    assert "unreachable" in messages[0] or "failed" in messages[0]


# -- moved from test_cache.py: the operations on memcached, and any backend's errors --


def test_claim_herd_key_elects_and_releases(cache: Cache) -> None:
    assert claim_herd_key(cache, "herd", "t1", 30) == ("t1", True)
    assert claim_herd_key(cache, "herd", "t2", 30) == ("t1", False)
    assert claim_herd_key(cache, "herd", "t1", 30) == ("t1", True)  # the owner itself

    assert refresh_herd_key(cache, "herd", "t2", 30) is False
    assert refresh_herd_key(cache, "herd", "t1", 30) is True
    assert cache.get("herd") == "t1"

    assert cache_delete_if_equal(cache, "herd", "t2") is False
    assert cache.get("herd") == "t1"
    assert cache_delete_if_equal(cache, "herd", "t1") is True
    assert claim_herd_key(cache, "herd", "t2", 30) == ("t2", True)

    barrier = threading.Barrier(20)

    def claim(task_id: str) -> tuple[str, bool]:
        barrier.wait()
        return claim_herd_key(cache, "contended", task_id, 30)

    with ThreadPoolExecutor(max_workers=20) as pool:
        outcomes = list(pool.map(claim, [f"task-{i}" for i in range(20)]))
    winners = {winner for winner, _ in outcomes}
    assert len(winners) == 1
    assert [won for _, won in outcomes].count(True) == 1
    assert cache.get("contended") == winners.pop()


def test_claim_herd_key_expires(cache: Cache) -> None:
    assert claim_herd_key(cache, "short", "t1", 1) == ("t1", True)
    wait_for(lambda: cache.get("short") is None, timeout=4)
    assert claim_herd_key(cache, "short", "t2", 30) == ("t2", True)


def test_claim_herd_key_degrades_when_memcached_is_down(
    lone_memcached: MemcachedServer, make_cache: MakeCache, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache([lone_memcached.address])
    lone_memcached.kill()
    assert claim_herd_key(cache, "herd", "t1", 30) == ("t1", True)
    assert claim_herd_key(cache, "herd", "t2", 30) == ("t2", True)
    assert refresh_herd_key(cache, "herd", "t1", 30) is False
    messages = warnings_from(caplog)
    assert sum("unreachable" in m for m in messages) == 1
    assert sum("could not claim" in m for m in messages) == 1


def test_helpers_swallow_errors_of_any_backend(caplog: pytest.LogCaptureFixture) -> None:
    with RedisServer() as redis_server:
        app = Flask(__name__)
        cache = Cache(app, config={"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": redis_server.url})
        assert cache_set(cache, "k", {"v": 1}, 0) is True
        assert cache_get(cache, "k") == {"v": 1}
        assert cache_get_many(cache, ["k", "missing"]) == [{"v": 1}, None]
        assert claim_herd_key(cache, "herd", "t1", 30) == ("t1", True)
        assert claim_herd_key(cache, "herd", "t2", 30) == ("t1", False)
        assert warnings_from(caplog) == []

        redis_server.kill()
        with pytest.raises(Exception, match="(?i)connect"):
            cache.get("k")  # the backend itself raises...
        assert cache_get(cache, "k") is None  # ...the helpers do not
        assert cache_get_many(cache, ["k", "j"]) == [None, None]
        assert cache_set(cache, "k", 1, 30) is False
        assert cache_add(cache, "k", 1, 30) is False
        assert cache_delete(cache, "k") is False
        assert cache_delete_if_equal(cache, "herd", "t1") is False
        assert refresh_herd_key(cache, "herd", "t1", 30) is False
        assert claim_herd_key(cache, "herd", "t3", 30) == ("t3", True)

    messages = warnings_from(caplog)
    assert sum("failed" in m for m in messages) == 1  # one warning per outage, not per call
    assert sum("could not claim" in m for m in messages) == 1


# -- atomicity of add per backend ---------------------------------------------------


class TenantCache(SimpleCache):
    """A user's subclass keeps its base's answer."""


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"CACHE_TYPE": "SimpleCache"}, "process-local"),
        ({"CACHE_TYPE": f"{__name__}.TenantCache"}, "process-local"),
        ({"CACHE_TYPE": "NullCache", "CACHE_NO_NULL_WARNING": True}, "not-atomic"),
        ({"CACHE_TYPE": "FileSystemCache"}, "not-atomic"),
        ({"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": "redis://127.0.0.1:1/0"}, "atomic"),
        ({"CACHE_TYPE": BACKEND, "CACHE_MEMCACHED_SERVERS": ["127.0.0.1:1"]}, "atomic"),
    ],
)
def test_describe_add_atomicity(config: dict[str, Any], expected: str, tmp_path: Path) -> None:
    app = Flask(__name__)
    cache = Cache(app, config={"CACHE_DIR": str(tmp_path), **config})
    backend = cache.cache
    try:
        assert describe_add_atomicity(backend) == expected
        assert describe_add_atomicity(cache) == expected
        assert describe_add_atomicity(backend) is AddAtomicity(expected)
    finally:
        if isinstance(backend, PyMemcacheCache):
            backend.close()


class TenantMemcache(PyMemcacheCache):
    """A user's subclass of our backend keeps its answer too."""


class TenantRedis(RedisCache):
    """... and of flask-caching's RedisCache."""


class RedisLookalike(SimpleCache):
    """Named like an atomic backend, but not flask-caching's: never trusted on its name."""


RedisLookalike.__name__ = "RedisCache"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {
                "CACHE_TYPE": "RedisSentinelCache",
                "CACHE_REDIS_SENTINELS": [("127.0.0.1", 1)],
                "CACHE_REDIS_SENTINEL_MASTER": "primary",
            },
            "atomic",
        ),
        (
            {"CACHE_TYPE": f"{__name__}.TenantRedis", "CACHE_REDIS_URL": "redis://127.0.0.1:1/0"},
            "atomic",
        ),
        (
            {
                "CACHE_TYPE": f"{__name__}.TenantMemcache",
                "CACHE_MEMCACHED_SERVERS": ["127.0.0.1:1"],
            },
            "atomic",
        ),
        ({"CACHE_TYPE": f"{__name__}.RedisLookalike"}, "process-local"),
    ],
    ids=["redis-sentinel", "redis-subclass", "pymemcache-subclass", "lookalike-name"],
)
def test_describe_add_atomicity_of_more_backends(config: dict[str, Any], expected: str) -> None:
    app = Flask(__name__)
    cache = Cache(app, config=config)
    try:
        assert describe_add_atomicity(cache) is AddAtomicity(expected)
    finally:
        if isinstance(cache.cache, PyMemcacheCache):
            cache.cache.close()


def test_describe_add_atomicity_of_backends_used_without_flask_caching(tmp_path: Path) -> None:
    assert describe_add_atomicity(cachelib.SimpleCache()) is AddAtomicity.PROCESS_LOCAL
    assert describe_add_atomicity(cachelib.FileSystemCache(str(tmp_path))) is (
        AddAtomicity.NOT_ATOMIC
    )
    assert describe_add_atomicity(cachelib.NullCache()) is AddAtomicity.NOT_ATOMIC
    assert describe_add_atomicity(object()) is AddAtomicity.NOT_ATOMIC
    assert describe_add_atomicity(None) is AddAtomicity.NOT_ATOMIC
