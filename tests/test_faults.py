"""Fault injection with real processes: what the user sees, and that nothing is lost.

Every test that kills something kills servers and workers of its own (the
``stack`` fixture, on the README's prefork worker), never the session's shared
ones; a test about the broker runs with RabbitMQ too. The load test only
stresses the shared servers and worker through a real gunicorn.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_jobtastic import keys
from flask_jobtastic.herd import cache_get
from tests.app_factory import close_app, create_app
from tests.rig import BROKERS, ROOT, RigPool, Servers, WorkerProcess
from tests.servers import free_port
from tests.tasks import CachedProgressTask, CountedTask, ShortHerdTask, runs

T = TypeVar("T")

ALICE = {"X-User": "alice"}

#: PyMemcacheCache's default ``dead_timeout``: how long a client skips a server
#: that failed before probing it again.
CACHE_DEAD_TIMEOUT = 1.0


# -- helpers -------------------------------------------------------------------


def wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def status_of(client: FlaskClient, task_id: str, headers: dict[str, str] | None = None) -> dict:
    response = client.get(f"/jobtastic/status/{task_id}", headers=headers)
    assert response.status_code in (200, 404), response.get_data(as_text=True)
    return response.get_json()


def wait_for_state(
    client: FlaskClient,
    task_id: str,
    state: str,
    timeout: float = 15.0,
    headers: dict[str, str] | None = None,
) -> dict:
    """The status document once it says ``state``; fail at once on another final state."""

    def check() -> dict | None:
        document = status_of(client, task_id, headers)
        if document["state"] == state:
            return document
        assert not document["ready"], f"job {task_id} ended {document} instead of {state}"
        return None

    return wait_for(check, timeout, f"job {task_id} to reach {state}")


def wait_until_cached(app: Flask, task_cls: type, task_id: str, **kwargs: Any) -> None:
    """Wait for the worker's on_success to cache ``task_id`` (it runs just after SUCCESS)."""
    state = app.extensions["jobtastic"]
    task = state.celery.tasks[task_cls.name]
    key = keys.result_key(task.cache_key_for(kwargs=kwargs))
    wait_for(
        lambda: cache_get(state.cache_backend, key) == task_id,
        5.0,
        f"the result of {task_id} to be cached",
    )


class Stack:
    """Servers of one test (to kill and restart), with its workers and apps.

    By default the quick start's layout: one Redis as broker and result
    backend. Parametrize ``stack`` (indirectly) with ``"rabbitmq"`` or
    ``"separate-redis"`` for a broker apart from the backend.
    """

    def __init__(self, servers: Servers, log_dir: Path) -> None:
        self.servers = servers
        self.broker = servers.broker
        self.backend = servers.redis
        self.memcached = servers.memcached
        # a queue of its own: the RabbitMQ node outlives the test
        self.env = servers.env(f"faults-{uuid.uuid4().hex[:8]}")
        self.log_dir = log_dir
        self.workers: list[WorkerProcess] = []
        self.apps: list[Flask] = []

    def start_worker(self) -> WorkerProcess:
        """The README's worker (prefork, two children) on this stack's servers."""
        worker = WorkerProcess(self.log_dir / f"worker-{len(self.workers)}.log", env=self.env)
        self.workers.append(worker)
        worker.start()
        return worker

    def app(self, **config: Any) -> Flask:
        app = create_app(servers=self.env, **config)
        self.apps.append(app)
        return app

    def close(self) -> None:
        for app in self.apps:
            close_app(app)
        for worker in self.workers:
            worker.kill()


@pytest.fixture
def stack(
    request: pytest.FixtureRequest, make_servers: Callable[..., Servers], tmp_path: Path
) -> Iterator[Stack]:
    stack = Stack(make_servers(getattr(request, "param", "redis")), tmp_path)
    yield stack
    stack.close()  # apps and workers before their servers (make_servers' teardown)


#: A broker that can die while the result backend lives.
apart_from_the_backend = pytest.mark.parametrize(
    "stack", ["rabbitmq", "separate-redis"], indirect=True
)
#: The quick start's one Redis, and a RabbitMQ broker.
on_every_broker = pytest.mark.parametrize("stack", ["redis", "rabbitmq"], indirect=True)


# -- 1. the broker dies and comes back -------------------------------------------


@apart_from_the_backend
def test_broker_killed_then_restarted(stack: Stack, token: str) -> None:
    stack.start_worker()
    app = stack.app()
    client = app.test_client()
    with app.app_context():
        warm_id = CountedTask.delay_or_fail(token=uuid.uuid4().hex, value=0, seconds=0).id
        wait_for_state(client, warm_id, "SUCCESS")  # a live pooled broker connection

        stack.broker.kill()
        started = time.monotonic()
        refused_id = CountedTask.delay_or_fail(token=token, value=1, seconds=0).id
        elapsed = time.monotonic() - started
        assert elapsed < 1.0, f"delay_or_fail took {elapsed:.2f} s with the broker down"
        document = status_of(client, refused_id)
        assert document["state"] == "FAILURE" and document["ready"] is True
        assert document["error"]["type"] == "BrokerUnavailable"
        assert "could not be queued" in document["error"]["message"]

        eager_token = uuid.uuid4().hex
        started = time.monotonic()
        eager = CountedTask.delay_or_eager(token=eager_token, value=2, seconds=0)
        eager_state, eager_id = eager.state, eager.id
        assert time.monotonic() - started < 1.0
        assert eager_state == "SUCCESS"  # computed here and now, no worker involved
        assert status_of(client, eager_id)["result"] == {"value": 2, "token": eager_token}
        assert runs(eager_token) == 1

        stack.broker.restart()
        again_id = CountedTask.delay_or_fail(token=token, value=1, seconds=0).id
        assert again_id != refused_id
        # the worker reconnects on its own (kombu retries after 2 s, then 4 s, ...)
        document = wait_for_state(client, again_id, "SUCCESS", timeout=20)
    assert document["result"] == {"value": 1, "token": token}
    assert runs(token) == 1  # the refused attempt never ran


# -- 2. memcached dies mid-job and comes back --------------------------------------


def test_memcached_killed_mid_job_then_restarted(stack: Stack, token: str) -> None:
    stack.start_worker()
    app = stack.app()
    client = app.test_client()
    with app.app_context():
        running_id = CachedProgressTask.delay_or_fail(token=token, seconds=3).id
        wait_for_state(client, running_id, "PROGRESS")
        stack.memcached.kill()
        document = wait_for_state(client, running_id, "SUCCESS", timeout=15)
        assert document["result"] == token and document["progress_percent"] == 100
        assert runs(token) == 1

        # memcached still down: jobs run, just without result caching
        uncached = uuid.uuid4().hex
        first_id = CachedProgressTask.delay_or_fail(token=uncached, seconds=0.2, steps=2).id
        wait_for_state(client, first_id, "SUCCESS")
        second_id = CachedProgressTask.delay_or_fail(token=uncached, seconds=0.2, steps=2).id
        assert second_id != first_id
        assert wait_for_state(client, second_id, "SUCCESS")["result"] == uncached
        assert runs(uncached) == 2

        stack.memcached.restart()
        # every client (ours and the worker's) probes the server again after dead_timeout
        time.sleep(CACHE_DEAD_TIMEOUT + 0.2)
        cached = uuid.uuid4().hex
        first_id = CachedProgressTask.delay_or_fail(token=cached, seconds=0.2, steps=2).id
        wait_for_state(client, first_id, "SUCCESS")
        wait_until_cached(app, CachedProgressTask, first_id, token=cached)
        second_id = CachedProgressTask.delay_or_fail(token=cached, seconds=0.2, steps=2).id
        assert second_id == first_id
        assert status_of(client, second_id)["result"] == cached
    assert runs(cached) == 1


# -- 3. the result backend dies and comes back ----------------------------------------


@apart_from_the_backend
def test_result_backend_killed_answers_503_then_recovers(stack: Stack, token: str) -> None:
    stack.start_worker()
    app = stack.app()
    client = app.test_client()
    with app.app_context():
        done_id = CountedTask.delay_or_fail(token=token, value=1, seconds=0).id
    wait_for_state(client, done_id, "SUCCESS")

    stack.backend.kill()
    requests = [
        ("GET", f"/jobtastic/status/{done_id}", None),
        ("GET", f"/jobtastic/status?ids={done_id}", None),
        ("POST", "/jobtastic/status", {"task_ids": [done_id]}),
        ("GET", f"/jobtastic/events/{done_id}", None),
    ]
    for method, url, body in requests:
        started = time.monotonic()
        response = client.open(url, method=method, json=body)
        assert response.status_code == 503, (url, response.status_code, response.data[:500])
        assert time.monotonic() - started < 1.0, f"{url} kept the user waiting"
        assert response.is_json, url
        assert response.get_json()["error"]["type"] == "ResultBackendUnavailable", url
        assert response.headers["Retry-After"]

    stack.backend.restart()  # no persistence: it comes back empty
    with app.app_context():
        fresh_id = CountedTask.delay_or_fail(token=token, value=2, seconds=0).id
    document = wait_for_state(client, fresh_id, "SUCCESS", timeout=20)
    assert document["result"] == {"value": 2, "token": token}
    batch = client.get(f"/jobtastic/status?ids={fresh_id}")
    assert batch.status_code == 200
    assert batch.get_json()["tasks"][fresh_id]["state"] == "SUCCESS"
    events = client.get(f"/jobtastic/events/{fresh_id}")
    assert events.status_code == 200
    assert '"state":"SUCCESS"' in events.get_data(as_text=True)


# -- 4. a worker is SIGKILLed mid-job ----------------------------------------------


def start_and_kill_mid_job(stack: Stack, app: Flask, token: str) -> tuple[str, float]:
    """Send a tracked 10 s ShortHerdTask as alice, SIGKILL its worker once it reports progress."""
    worker = stack.start_worker()
    with app.test_request_context(headers=ALICE):
        result_id = ShortHerdTask.delay_or_fail(token=token, seconds=10).id
    client = app.test_client()

    def under_way() -> bool:
        document = wait_for_state(client, result_id, "PROGRESS", headers=ALICE)
        return 0 < document["progress_percent"] < 100

    wait_for(under_way, 15, f"job {result_id} to make progress")
    worker.kill()
    return result_id, time.monotonic()


@on_every_broker
def test_killed_worker_job_reads_as_worker_lost(stack: Stack, token: str) -> None:
    app = stack.app(owner_header="X-User")
    client = app.test_client()
    task_id, killed_at = start_and_kill_mid_job(stack, app, token)
    grace = ShortHerdTask.herd_avoidance_timeout + 2

    def settled() -> tuple[dict, dict] | None:
        document = status_of(client, task_id, ALICE)
        jobs = client.get("/jobtastic/jobs", headers=ALICE).get_json()["jobs"]
        record = {job["id"]: job for job in jobs}.get(task_id)
        assert record is not None, f"job {task_id} missing from my jobs: {jobs}"
        if document["state"] != "PROGRESS" and record["state"] != "running":
            return document, record
        if time.monotonic() - killed_at > grace:
            return document, record  # assert below, showing both
        return None

    document, record = wait_for(settled, grace + 5, "the lost job to settle")
    error = document.get("error", {})
    assert (document["state"], error.get("type"), record["state"]) == (
        "FAILURE",
        "WorkerLost",
        "failed",
    ), f"{grace} s after the kill: status {document}, my-jobs record {record}"
    assert document["ready"] is True
    assert "stopped unexpectedly" in error["message"]
    stream = client.get(f"/jobtastic/events/{task_id}", headers=ALICE).get_data(as_text=True)
    assert '"type":"WorkerLost"' in stream


@on_every_broker
def test_killed_worker_frees_the_herd_key_and_the_retry_computes_once(
    stack: Stack, token: str
) -> None:
    app = stack.app(owner_header="X-User")
    client = app.test_client()
    lost_id, killed_at = start_and_kill_mid_job(stack, app, token)
    assert runs(token) == 1

    def identical_call() -> str | None:
        with app.test_request_context(headers=ALICE):
            task_id = ShortHerdTask.delay_or_fail(token=token, seconds=0.5).id
        return task_id if task_id != lost_id else None  # same id: joined the lost run

    new_id = wait_for(
        identical_call,
        ShortHerdTask.herd_avoidance_timeout + 2,
        "an identical call to stop joining the lost job",
    )
    assert time.monotonic() - killed_at < ShortHerdTask.herd_avoidance_timeout + 2
    with app.test_request_context(headers=ALICE):
        assert ShortHerdTask.delay_or_fail(token=token, seconds=0.5).id == new_id

    stack.start_worker()
    document = wait_for_state(client, new_id, "SUCCESS", timeout=20, headers=ALICE)
    assert document["result"] == token
    assert runs(token) == 2  # the lost run, then exactly one more


# -- 5. a thousand identical requests through a real web server ----------------------


@pytest.fixture(scope="module", params=BROKERS)
def web_server(
    request: pytest.FixtureRequest, rig_pool: RigPool, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    """gunicorn serving tests.web_app on the session's servers and worker; yields its port.

    Once on the one Redis, once with the RabbitMQ broker.
    """
    worker, queue = rig_pool.worker("prefork", request.param, 2)
    assert worker.alive
    env = {**os.environ, **rig_pool.shared_servers(request.param).env(queue)}
    port = free_port()
    log_path = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--workers=2",
                "--worker-class=gthread",
                "--threads=32",
                "--backlog=2048",
                f"--bind=127.0.0.1:{port}",
                "tests.web_app:app",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def answers() -> bool:
            assert process.poll() is None, log_path.read_text()
            try:
                return http_request(port, "GET", f"/jobtastic/status/{uuid.uuid4()}")[0] == 404
            except OSError:
                return False

        wait_for(answers, 30, "gunicorn to serve the app")
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def http_request(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One HTTP request over loopback, straight to the server (no proxy)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None
    finally:
        connection.close()


def test_thousand_concurrent_identical_requests_compute_once(web_server: int, token: str) -> None:
    """All requests land while the one run is in flight (the next test covers its end)."""
    body = {"token": token, "value": 7, "seconds": 5}
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=100) as pool:
        answers = list(
            pool.map(lambda _: http_request(web_server, "POST", "/start", body), range(1000))
        )
    elapsed = time.monotonic() - started
    assert [code for code, _ in answers] == [200] * 1000
    ids = {reply["task_id"] for _, reply in answers}
    assert len(ids) == 1, (
        f"{len(ids)} different jobs for one request; the burst took {elapsed:.1f} s "
        f"of the job's {body['seconds']} s"
    )
    (task_id,) = ids

    def finished() -> dict | None:
        code, document = http_request(web_server, "GET", f"/jobtastic/status/{task_id}")
        assert code == 200, document
        return document if document["ready"] else None

    document = wait_for(finished, 20, f"job {task_id} to finish")
    assert document["state"] == "SUCCESS"
    assert document["result"] == {"value": 7, "token": token}
    assert runs(token) == 1


def test_identical_requests_arriving_as_the_job_finishes_share_one_run(
    web_server: int, token: str
) -> None:
    """Users keep asking while the 2 s job ends: before, the run's id; after, its cached id."""
    stop = time.monotonic() + 3.0

    def keep_asking(_: int) -> list[tuple[int, Any]]:
        answers = []
        while time.monotonic() < stop:
            answers.append(http_request(web_server, "POST", "/start", {"token": token, "value": 8}))
        return answers

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = [answer for batch in pool.map(keep_asking, range(32)) for answer in batch]
    assert {code for code, _ in answers} == {200}
    ids = sorted({reply["task_id"] for _, reply in answers})

    def all_finished() -> bool:
        return all(
            http_request(web_server, "GET", f"/jobtastic/status/{task_id}")[1]["ready"]
            for task_id in ids
        )

    wait_for(all_finished, 20, f"jobs {ids} to finish")
    assert runs(token) == 1, (
        f"{len(answers)} identical requests made {runs(token)} runs under {len(ids)} ids"
    )
    # A caller that claimed the key in the instant the run released it gets the
    # cached result under its own id: every id a user got shows the same result.
    documents = [
        http_request(web_server, "GET", f"/jobtastic/status/{task_id}")[1] for task_id in ids
    ]
    assert {d["state"] for d in documents} == {"SUCCESS"}
    assert len({json.dumps(d["result"], sort_keys=True) for d in documents}) == 1
