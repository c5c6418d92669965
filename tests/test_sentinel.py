"""The registry and the event stream over Redis Sentinel and over TLS (``rediss://``).

Real servers: a Sentinel (quorum 1) watching a throwaway redis-server, a
replica for the failover test, and a TLS-only redis-server with a self-signed
certificate. The apps use the in-memory broker and no worker: a sent job stays
queued, and its progress is planted with the result backend's own
``store_result``, as a worker's ``update_state`` writes it.
"""

from __future__ import annotations

import contextlib
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
import redis
from flask import Flask, request
from redis.sentinel import SentinelConnectionPool

from flask_jobtastic import Jobtastic, side_records
from flask_jobtastic.errors import ConfigurationError
from flask_jobtastic.extension import _registry_on_backend_redis, build_registry
from flask_jobtastic.redis_urls import client_from_url, same_server, server_of
from flask_jobtastic.registry import RedisRegistryStore
from tests import strict
from tests.app_factory import close_app
from tests.servers import RedisReplica, RedisServer, SentinelServer, TlsRedisServer

MASTER = "mymaster"


def user(token: str) -> dict[str, str]:
    """The request headers of a test's own user (its token): tests share servers."""
    return {"X-User": token}


MakeApp = Callable[..., Flask]


@pytest.fixture(scope="module")
def master() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def sentinel(master: RedisServer) -> Iterator[SentinelServer]:
    """A Sentinel of the module's tests that do not fail the master over."""
    with SentinelServer(master, master_name=MASTER) as server:
        yield server


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TlsRedisServer]:
    with TlsRedisServer() as server:
        yield server


def sentinel_url(server: SentinelServer, db: int = 1) -> str:
    return f"sentinel://{server.host}:{server.port}/{db}"


def close_client(client: Any) -> None:
    """Close a registry client's connections, a Sentinel client's Sentinels' too."""
    pool = client.connection_pool
    pool.disconnect()
    manager = getattr(pool, "sentinel_manager", None)
    for each in getattr(manager, "sentinels", ()):
        each.close()


@pytest.fixture
def make_app() -> Iterator[MakeApp]:
    """``make_app(backend_url, celery={...}, **config)``: an app on that result backend.

    The owner is the ``X-User`` header; jobs sent stay queued (no worker).
    """
    made: list[Flask] = []

    def make(backend_url: str, celery: dict[str, Any] | None = None, **config: Any) -> Flask:
        app = Flask(f"sentinel-{uuid.uuid4().hex[:8]}")
        app.config.update(
            TESTING=True,
            JOBTASTIC_RUN_SYNCHRONOUSLY=False,
            JOBTASTIC_EMBEDDED_WORKER=False,
            JOBTASTIC_CACHE={"CACHE_TYPE": "SimpleCache"},
            CELERY={"broker_url": "memory://", "result_backend": backend_url, **(celery or {})},
            **config,
        )
        Jobtastic(app).owner_loader(lambda: request.headers.get("X-User"))
        import tests.tasks  # noqa: F401  registers the test jobs

        made.append(app)
        return app

    yield make
    for app in made:
        registry = app.extensions["jobtastic"].registry
        store = getattr(registry, "store", None)
        with contextlib.suppress(Exception):
            close_app(app)
        if isinstance(store, RedisRegistryStore):
            close_client(store.client)


def sentinel_app(make_app: MakeApp, server: SentinelServer, **config: Any) -> Flask:
    options = {"result_backend_transport_options": {"master_name": server.master_name}}
    return make_app(sentinel_url(server), celery=options, **config)


def send_tracked(app: Flask, token: str) -> str:
    from tests.tasks import TrackedTask

    with app.test_request_context(headers=user(token)):
        return str(TrackedTask.delay_or_fail(token=token).id)


def plant(app: Flask, task_id: str, state: str, meta: Any) -> None:
    """Write a job's state as a worker would, through the app's result backend."""
    backend = app.extensions["jobtastic"].celery.backend
    if state == "PROGRESS":
        side_records.write_side(backend, "run", task_id, side_records.alive_marker())
    backend.store_result(task_id, meta, state)


def progress(percent: float) -> dict[str, Any]:
    return {"progress_percent": percent, "completed": percent, "total": 100}


def my_job_ids(app: Flask, token: str) -> list[str]:
    response = app.test_client().get("/jobtastic/jobs", headers=user(token))
    assert response.status_code == 200, response.get_data(as_text=True)
    return [job["id"] for job in strict.body_of(response)["jobs"]]


def next_status(events: Iterator[tuple[str, Any]], task_id: str) -> dict[str, Any]:
    for name, payload in events:
        if name == "status" and payload.get("task_id") == task_id:
            return dict(payload)
    raise AssertionError("the stream ended")


def follow_progress(app: Flask, task_id: str, token: str, percents: list[float]) -> None:
    """``/events?ids=`` pushes each planted PROGRESS, then the result, and ends."""
    response = app.test_client().get(
        f"/jobtastic/events?ids={task_id}", headers=user(token), buffered=False
    )
    assert response.status_code == 200
    events = strict.sse_events(response.response)
    try:
        assert next_status(events, task_id)["state"] in ("PENDING", "QUEUED")
        for percent in percents:
            plant(app, task_id, "PROGRESS", progress(percent))
            document = next_status(events, task_id)
            assert document["state"] == "PROGRESS"
            assert document["progress_percent"] == percent
        plant(app, task_id, "SUCCESS", "done")
        last = next_status(events, task_id)
        assert last["state"] == "SUCCESS" and last["result"] == "done"
        assert [name for name, _ in events] == ["done"]
    finally:
        response.close()


# -- Sentinel ------------------------------------------------------------------------


def test_auto_registry_uses_the_backends_sentinel(make_app, sentinel, master, token):
    app = sentinel_app(make_app, sentinel)
    state = app.extensions["jobtastic"]
    assert state.registry is not None and state.registry_on_backend_redis
    pool = state.registry.store.client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == MASTER
    job = send_tracked(app, token)
    assert my_job_ids(app, token) == [job]
    direct = redis.Redis(host=master.host, port=master.port, db=1)
    try:  # on the master, in the backend's db
        assert direct.exists(f"jobtastic:registry:job:{job}")
    finally:
        direct.close()


def test_the_event_stream_pushes_progress_over_sentinel(make_app, sentinel, token):
    app = sentinel_app(make_app, sentinel)
    job = send_tracked(app, token)
    follow_progress(app, job, token, [25.0, 60.0])


def test_the_owner_stream_hears_the_registry_over_sentinel(make_app, sentinel, token):
    app = sentinel_app(make_app, sentinel)
    response = app.test_client().get("/jobtastic/events/jobs", headers=user(token), buffered=False)
    events = strict.sse_events(response.response)
    try:
        job = send_tracked(app, token)
        for name, payload in events:
            if name == "job" and payload["id"] == job:
                assert payload["state"] == "queued"
                break
        app.extensions["jobtastic"].registry.record_state(job, "running", progress=10)
        for name, payload in events:
            if name == "job" and payload["id"] == job and payload["state"] == "running":
                break
    finally:
        response.close()


def test_an_explicit_sentinel_registry(make_app, sentinel, master, token):
    app = sentinel_app(make_app, sentinel, JOBTASTIC_REGISTRY=sentinel_url(sentinel, db=3))
    state = app.extensions["jobtastic"]
    assert state.registry_on_backend_redis  # same Sentinel, same master: one server
    job = send_tracked(app, token)
    assert my_job_ids(app, token) == [job]
    direct = redis.Redis(host=master.host, port=master.port, db=3)
    try:
        assert direct.exists(f"jobtastic:registry:job:{job}")
    finally:
        direct.close()


def test_the_registry_master_name_setting(make_app, sentinel, master):
    url = sentinel_url(sentinel, db=3)
    app = make_app(master.url, JOBTASTIC_REGISTRY=url, JOBTASTIC_REGISTRY_MASTER_NAME=MASTER)
    store = app.extensions["jobtastic"].registry.store
    assert store.client.ping() and store.client.connection_pool.service_name == MASTER
    assert not app.extensions["jobtastic"].registry_on_backend_redis  # unknowable: poll
    with pytest.raises(ConfigurationError, match="JOBTASTIC_REGISTRY_MASTER_NAME"):
        make_app(master.url, JOBTASTIC_REGISTRY=url)


def test_a_store_from_a_sentinel_url(sentinel):
    from flask_jobtastic.registry_store import JobRecord

    store = RedisRegistryStore(sentinel_url(sentinel, db=6), master_name=MASTER)
    try:
        record = JobRecord(
            id=str(uuid.uuid4()),
            task_name="t",
            owner=None,
            description=None,
            state="queued",
            created_at=1.0,
            updated_at=1.0,
        )
        store.save(record)
        assert store.get(record.id) == record
        with pytest.raises(ConfigurationError, match="master"):
            RedisRegistryStore(sentinel_url(sentinel))
    finally:
        store.clear()
        close_client(store.client)


def test_sentinel_credentials_and_options_pass_through():
    """The master's db and password, the Sentinels' own options: nothing connects."""
    config = {
        "JOBTASTIC_REGISTRY": "sentinel://:secret@10.0.0.1:26380/2;sentinel://10.0.0.2/2",
        "JOBTASTIC_REGISTRY_SEEN_TTL": 120.0,
        "JOBTASTIC_REGISTRY_UNSEEN_TTL": 3600.0,
    }
    celery = _celery(
        "sentinel://:secret@10.0.0.1:26380/2",
        result_backend_transport_options={
            "master_name": "cache-master",
            "sentinel_kwargs": {"password": "sentinel-secret"},
            "min_other_sentinels": 1,
        },
    )
    sentinels = {}
    for setting in (config["JOBTASTIC_REGISTRY"], "auto"):
        registry = build_registry({**config, "JOBTASTIC_REGISTRY": setting}, celery)
        assert registry is not None
        pool = registry.store.client.connection_pool
        assert pool.service_name == "cache-master"
        assert pool.connection_kwargs["db"] == 2
        assert pool.connection_kwargs["password"] == "secret"
        manager = pool.sentinel_manager
        assert manager.min_other_sentinels == 1
        first = manager.sentinels[0].connection_pool.connection_kwargs
        assert (first["host"], first["port"], first["password"]) == (
            "10.0.0.1",
            26380,
            "sentinel-secret",
        )
        sentinels[setting] = [
            s.connection_pool.connection_kwargs["port"] for s in manager.sentinels
        ]
    assert sentinels == {config["JOBTASTIC_REGISTRY"]: [26380, 26379], "auto": [26380]}


def _celery(backend_url: str, **conf: Any) -> Any:
    from celery import Celery

    celery = Celery("sentinel-tests", set_as_current=False)
    celery.conf.update(result_backend=backend_url, broker_url="memory://", **conf)
    return celery


def test_failover_keeps_the_registry_and_the_stream_working(make_app, token):
    """The master dies; Sentinel promotes the replica; both clients ask it again."""
    with contextlib.ExitStack() as servers:
        first = servers.enter_context(RedisServer())
        replica = servers.enter_context(RedisReplica(first))
        replica.wait_until_synced()
        watcher = servers.enter_context(SentinelServer(first, down_after_ms=300))
        watcher.wait_for_replicas(1)
        app = sentinel_app(make_app, watcher)
        job = send_tracked(app, token)
        plant(app, job, "PROGRESS", progress(10.0))
        with contextlib.closing(redis.Redis(host=first.host, port=first.port)) as old:
            assert old.execute_command("WAIT", 1, 5000) == 1  # the replica has it all
        response = app.test_client().get(
            f"/jobtastic/events?ids={job}", headers=user(token), buffered=False
        )
        events = strict.sse_events(response.response)
        try:
            assert next_status(events, job)["progress_percent"] == 10.0
            first.kill()
            watcher.wait_for_master(replica.port)
            assert my_job_ids(app, token) == [job]  # read from the promoted replica
            registry = app.extensions["jobtastic"].registry
            assert registry.record_state(job, "running", progress=50).state == "running"
            _plant_until_it_works(app, job, progress(50.0))
            deadline = time.monotonic() + 20
            while (document := next_status(events, job))["progress_percent"] != 50.0:
                assert time.monotonic() < deadline
            assert document["state"] == "PROGRESS"
        finally:
            response.close()
        with contextlib.closing(redis.Redis(host=replica.host, port=replica.port, db=1)) as new:
            assert new.exists(f"jobtastic:registry:job:{job}")
            assert new.info("replication")["role"] == "master"


def _plant_until_it_works(app: Flask, job: str, meta: Any, timeout: float = 10.0) -> None:
    """Celery's backend may meet a connection the failover broke: its next try asks again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            plant(app, job, "PROGRESS", meta)
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# -- TLS -----------------------------------------------------------------------------


def tls_url(server: TlsRedisServer, db: int = 1, reqs: str = "required") -> str:
    ca = quote(str(server.ca_file), safe="")
    return f"rediss://{server.host}:{server.port}/{db}?ssl_cert_reqs={reqs}&ssl_ca_certs={ca}"


def use_ssl(server: TlsRedisServer) -> dict[str, Any]:
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(server.ca_file)}


def test_auto_registry_and_stream_over_tls(make_app, tls_redis, token):
    app = make_app(tls_url(tls_redis))
    state = app.extensions["jobtastic"]
    assert state.registry is not None and state.registry_on_backend_redis
    job = send_tracked(app, token)
    assert my_job_ids(app, token) == [job]
    follow_progress(app, job, token, [40.0])


def test_auto_registry_takes_celerys_redis_backend_use_ssl(make_app, tls_redis, token):
    url = f"rediss://{tls_redis.host}:{tls_redis.port}/1"
    app = make_app(url, celery={"redis_backend_use_ssl": use_ssl(tls_redis)})
    job = send_tracked(app, token)
    assert my_job_ids(app, token) == [job]


@pytest.mark.parametrize("reqs", ["required", "CERT_REQUIRED"])
def test_an_explicit_tls_registry(make_app, tls_redis, master, token, reqs):
    app = make_app(master.url, JOBTASTIC_REGISTRY=tls_url(tls_redis, db=4, reqs=reqs))
    assert not app.extensions["jobtastic"].registry_on_backend_redis
    job = send_tracked(app, token)
    assert my_job_ids(app, token) == [job]


def test_an_explicit_tls_registry_borrows_the_backends_tls_settings(make_app, tls_redis, token):
    backend = f"rediss://{tls_redis.host}:{tls_redis.port}/1"
    app = make_app(
        backend,
        celery={"redis_backend_use_ssl": use_ssl(tls_redis)},
        JOBTASTIC_REGISTRY=f"rediss://{tls_redis.host}:{tls_redis.port}/5",
    )
    assert app.extensions["jobtastic"].registry_on_backend_redis  # same server, other db
    job = send_tracked(app, token)
    assert my_job_ids(app, token) == [job]


def test_tls_verifies_the_servers_certificate(tls_redis):
    """Without the test CA the self-signed certificate is refused: TLS is really on."""
    client = client_from_url(f"rediss://{tls_redis.host}:{tls_redis.port}/1")
    try:
        with pytest.raises(redis.ConnectionError, match="(?i)certificate"):
            client.ping()
    finally:
        close_client(client)
    trusted = client_from_url(tls_url(tls_redis))
    try:
        assert trusted.ping()
    finally:
        close_client(trusted)


# -- which server is which -----------------------------------------------------------


@pytest.mark.parametrize(
    ("registry", "registry_master", "backend", "backend_master", "same"),
    [
        ("sentinel://a:1/2;sentinel://b:2/2", "m", "sentinel://b:2/1", "m", True),
        ("sentinel://a:1/2", "m", "sentinel://b:2/1", "m", False),
        ("sentinel://a:1/2", "other", "sentinel://a:1/1", "m", False),
        ("sentinel://a:26379", "m", "redis://a:26379/1", None, False),
        ("rediss://a:6380/3", None, "redis://a:6380/1", None, True),
        ("rediss://a:6380/3", None, "rediss://b:6380/1", None, False),
    ],
)
def test_same_server(registry, registry_master, backend, backend_master, same):
    answer = same_server(server_of(registry, registry_master), server_of(backend, backend_master))
    assert answer is same


def test_registry_on_backend_redis_for_sentinel_settings():
    celery = _celery("sentinel://h:1/1", result_backend_transport_options={"master_name": "m"})
    assert _registry_on_backend_redis({"JOBTASTIC_REGISTRY": "auto"}, celery)
    explicit = {"JOBTASTIC_REGISTRY": "sentinel://h:1/4"}
    assert _registry_on_backend_redis(explicit, celery)
    renamed = {**explicit, "JOBTASTIC_REGISTRY_MASTER_NAME": "n"}
    assert not _registry_on_backend_redis(renamed, celery)
    auto_renamed = {"JOBTASTIC_REGISTRY": "auto", "JOBTASTIC_REGISTRY_MASTER_NAME": "n"}
    assert not _registry_on_backend_redis(auto_renamed, celery)
    ttls = {"JOBTASTIC_REGISTRY_SEEN_TTL": 1.0, "JOBTASTIC_REGISTRY_UNSEEN_TTL": 2.0}
    registry = build_registry({**auto_renamed, **ttls}, celery)
    assert registry.store.client.connection_pool.service_name == "n"
