"""Shared fixtures: the README's deployment, started for real.

One throwaway redis-server is broker (db 0) and result backend (db 1), with
the run counters of tests/tasks.py in db 2; memcached holds the cache; the
worker is ``celery -A tests.worker_app worker`` on the default prefork pool
with two children. A RabbitMQ node of the suite's own is started the first
time a test asks for the RabbitMQ broker. tests/rig.py builds the variants
(``make_rig``, ``make_servers``, ``every_broker``).
"""

from __future__ import annotations

import contextlib
import gc
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from flask_caching import Cache

from flask_jobtastic.cache import PyMemcacheCache
from flask_jobtastic.registry_memory import MemoryRegistryStore
from flask_jobtastic.registry_redis import RedisRegistryStore
from flask_jobtastic.registry_store import RegistryStore
from tests.caches import BACKEND, MakeCache
from tests.rig import (
    ARTIFACTS,
    ROOT,
    Broker,
    RigFactory,
    RigPool,
    Servers,
    WorkerProcess,
    own_servers,
)
from tests.servers import MemcachedServer, RabbitMQServer, RedisServer

__all__ = ["ARTIFACTS", "ROOT", "WorkerProcess"]  # imported from here by other modules


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The one Redis: broker (db 0), result backend (db 1) and run counters (db 2)."""
    with RedisServer() as server:
        yield server
        # Celery results unsubscribe from the backend when collected: let them
        # do it while the server still runs.
        gc.collect()


@pytest.fixture(scope="session")
def broker_server(redis_server: RedisServer) -> RedisServer:
    """The shared worker's broker: the same Redis (the quick start's layout)."""
    return redis_server


@pytest.fixture(scope="session")
def memcached_server() -> Iterator[MemcachedServer]:
    with MemcachedServer() as server:
        yield server


@pytest.fixture(scope="module")
def memcached() -> Iterator[MemcachedServer]:
    """A memcached of the test module's own, shared by its tests that do not crash it.

    Not the session's: cache tests flush it, which would drop the worker's keys.
    """
    with MemcachedServer() as server:
        yield server


@pytest.fixture
def lone_memcached() -> Iterator[MemcachedServer]:
    """A memcached this test alone may kill and restart."""
    with MemcachedServer() as server:
        yield server


@pytest.fixture
def make_cache() -> Iterator[MakeCache]:
    """``make_cache(servers, **config)``: a Flask app's Cache on PyMemcacheCache.

    Each gets its own key prefix; their pooled connections are closed after the test.
    """
    made: list[Cache] = []

    def make(servers: object, **config: object) -> Cache:
        app = Flask(__name__)
        settings = {
            "CACHE_TYPE": BACKEND,
            "CACHE_MEMCACHED_SERVERS": servers,
            "CACHE_KEY_PREFIX": f"t{uuid.uuid4().hex[:10]}:",
            **config,
        }
        cache = Cache(app, config=settings)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        backend = cache.cache
        if isinstance(backend, PyMemcacheCache):
            backend.close()


@pytest.fixture
def cache(memcached: MemcachedServer, make_cache: MakeCache) -> Cache:
    """A Cache on PyMemcacheCache over the module's memcached."""
    return make_cache([memcached.address])


class LazyRabbitMQ:
    """A RabbitMQ node booted on first use (about 10 s), closed at session end."""

    def __init__(self) -> None:
        self.server: RabbitMQServer | None = None

    def __call__(self) -> RabbitMQServer:
        if self.server is None:
            self.server = RabbitMQServer()
        self.server.start()  # started again if a test killed it
        return self.server

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture(scope="session")
def shared_rabbitmq() -> Iterator[LazyRabbitMQ]:
    """The RabbitMQ broker of the shared rigs: never kill it (see ``fragile_rabbitmq``)."""
    node = LazyRabbitMQ()
    yield node
    node.close()


@pytest.fixture(scope="session")
def fragile_rabbitmq() -> Iterator[LazyRabbitMQ]:
    """A second RabbitMQ node, for tests that kill the broker (``make_servers``)."""
    node = LazyRabbitMQ()
    yield node
    node.close()


@pytest.fixture(scope="session")
def rabbitmq_server(shared_rabbitmq: LazyRabbitMQ) -> RabbitMQServer:
    """The shared rigs' RabbitMQ node, booted on first use."""
    return shared_rabbitmq()


@pytest.fixture(scope="session")
def default_servers(redis_server: RedisServer, memcached_server: MemcachedServer) -> Servers:
    return Servers(redis_server, memcached_server)


@pytest.fixture(scope="session", autouse=True)
def test_environment(default_servers: Servers) -> Iterator[None]:
    """Point the app factory (and the workers it starts) at the default servers."""
    saved = dict(os.environ)
    os.environ.update(default_servers.env())
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def rig_pool(
    default_servers: Servers, test_environment: None, shared_rabbitmq: LazyRabbitMQ
) -> Iterator[RigPool]:
    pool = RigPool(default_servers, shared_rabbitmq)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def celery_worker(rig_pool: RigPool) -> WorkerProcess:
    """The session's worker, as the README starts it: prefork, two children, one Redis."""
    worker, _ = rig_pool.worker("prefork", "redis", 2)
    return worker


@pytest.fixture
def make_servers(
    fragile_rabbitmq: LazyRabbitMQ, default_servers: Servers, caplog: pytest.LogCaptureFixture
) -> Iterator[Callable[..., Servers]]:
    """``make_servers(broker="redis")``: servers of the test's own, to kill and restart.

    A fresh Redis (broker db 0 and backend db 1, or the backend only with
    ``broker="separate-redis"``, which adds a broker Redis) and memcached; with
    ``broker="rabbitmq"``, the session's fragile RabbitMQ node, restarted if a
    previous test left it down. Run counters stay on the session's Redis.
    """
    with contextlib.ExitStack() as exits:

        def make(broker: Broker = "redis") -> Servers:
            context = own_servers(broker, fragile_rabbitmq, default_servers.counter_url)
            return exits.enter_context(context)

        yield make
        # A captured record of a logged outage holds the exception, whose traceback
        # keeps the sending frames and the AsyncResults in them alive. Collected only
        # after the servers stopped, those results would unsubscribe from a Redis
        # already gone (20 s of retries, then an unraisable error): free them now.
        caplog.get_records("call").clear()
        gc.collect()


@pytest.fixture
def make_rig(
    rig_pool: RigPool, make_servers: Callable[..., Servers], tmp_path: Path
) -> Iterator[RigFactory]:
    """``make_rig(pool="prefork", broker="redis", fresh=False, servers=None, **config)``.

    See tests/rig.py. Apps it made are closed after the test, and workers of
    the test's own (``fresh=True`` or ``servers=``) are killed.
    """
    factory = RigFactory(rig_pool, tmp_path)
    yield factory
    factory.close()


@pytest.fixture
def broker_name() -> Broker:
    """The broker of the ``app`` fixture; ``tests.rig.every_broker`` runs a test on each."""
    return "redis"


@pytest.fixture
def app(broker_name: Broker, make_rig: RigFactory) -> Iterator[Flask]:
    """An app on the default servers; on the RabbitMQ broker (and its worker) when asked."""
    from tests.app_factory import close_app, create_app

    # Closed apps of earlier tests linger in reference cycles, and a task class
    # defined later binds to every live Celery app, its class-level calls going
    # through whichever came last: one on servers a fault test already stopped.
    gc.collect()
    if broker_name != "redis":
        yield make_rig("prefork", broker_name).app
        return
    app = create_app()
    yield app
    close_app(app)


@pytest.fixture
def make_app(broker_name: Broker, make_rig: RigFactory) -> Iterator[Callable[..., Flask]]:
    """``make_app(**config)``: more apps like ``app`` (same broker), closed after the test.

    Build an app before sending through it: the class-level ``delay`` calls
    go through the app bound last.
    """
    from tests.app_factory import close_app, create_app

    made: list[Flask] = []

    def make(**config: object) -> Flask:
        if broker_name != "redis":
            return make_rig("prefork", broker_name).make_app(**config)
        app = create_app(**config)
        made.append(app)
        return app

    yield make
    for app in made:
        close_app(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def token() -> str:
    """A unique value that keeps each test's jobs apart from the others'."""
    return uuid.uuid4().hex


@pytest.fixture
def counter(test_environment: None) -> redis.Redis:
    return redis.Redis.from_url(os.environ["JOBTASTIC_TEST_COUNTER_URL"])


# -- the job registry's stores ---------------------------------------------------------


@pytest.fixture(scope="module")
def registry_redis() -> Iterator[RedisServer]:
    """A Redis of the module's own for the registry tests, emptied per test."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_client(registry_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(registry_redis.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> RegistryStore:
    """Each registry store in turn: the contract holds for both."""
    if request.param == "memory":
        return MemoryRegistryStore()
    client: redis.Redis = request.getfixturevalue("redis_client")
    return RedisRegistryStore(client)
