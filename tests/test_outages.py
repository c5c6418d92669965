"""Redis or the broker down under a real web process: fast answers, no 500, recovery.

Each case runs a web process of its own (``tests.outage_web``), fresh (it has
sent nothing yet) or warm (it has), on servers of its own with a real worker,
then kills the broker, the result backend, or the one Redis that is both (the
quick start's layout), and restarts it.
"""

from __future__ import annotations

import gc
import json
import os
import selectors
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.app_factory import close_app, create_app
from tests.conftest import ROOT
from tests.servers import MemcachedServer, RabbitMQServer, RedisServer, ServerProcess
from tests.tasks import TrackedTask
from tests.test_faults import EnvWorker

#: How long one command to the web process may take before the test calls it a hang.
COMMAND_TIMEOUT = 60.0

#: The issue's bound for ``delay_or_fail`` with something down.
FAIL_BOUND = 1.0


class WebProcess:
    """``python -m tests.outage_web``: a web app in a process of its own, driven by JSON lines."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.outage_web"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self._selector = selectors.DefaultSelector()
        assert self.process.stdout is not None
        self._selector.register(self.process.stdout, selectors.EVENT_READ)
        assert self._read(COMMAND_TIMEOUT) == {"ready": True}

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        if not self._selector.select(timeout):
            pytest.fail(f"the web process did not answer within {timeout} s (a hang); {self.log()}")
        line = self.process.stdout.readline()
        if not line:
            pytest.fail(f"the web process exited ({self.process.poll()}); {self.log()}")
        answer = json.loads(line)
        assert "exception" not in answer, f"{answer['exception']}; {self.log()}"
        return answer

    def ask(self, cmd: str, **arguments: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"cmd": cmd, **arguments}) + "\n")
        self.process.stdin.flush()
        return self._read(COMMAND_TIMEOUT)

    def log(self) -> str:
        self._log.flush()
        return "log: " + self.log_path.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()
        self._selector.close()
        self._log.close()


class Rig:
    """Servers of one test: a memcached, and Redis servers per ``layout``.

    ``both``: one Redis is broker and result backend (the quick start), and the
    one that goes down. ``broker`` / ``backend``: two Redis servers, the named
    one goes down. ``rabbitmq``: a RabbitMQ broker goes down, results on Redis.
    """

    def __init__(
        self, exits: ExitStack, layout: str, log_dir: Path, rabbitmq: RabbitMQServer | None
    ) -> None:
        self.memcached = exits.enter_context(MemcachedServer())
        # the module's RabbitMQ outlives the test; a Redis is the test's own
        first: ServerProcess = rabbitmq or exits.enter_context(RedisServer())
        second = first if layout == "both" else exits.enter_context(RedisServer())
        self.broker, self.backend = (first, second) if layout != "backend" else (second, first)
        #: the server this test kills
        self.victim = first
        self.log_dir = log_dir
        self.env = {
            "JOBTASTIC_TEST_BROKER_URL": self.broker.url,
            "JOBTASTIC_TEST_BACKEND_URL": self.backend.url,
            # run counters stay on the session's Redis, which nobody kills
            "JOBTASTIC_TEST_COUNTER_URL": os.environ["JOBTASTIC_TEST_COUNTER_URL"],
            "JOBTASTIC_TEST_MEMCACHED": self.memcached.address,
        }
        self.worker = EnvWorker(log_dir / "worker.log", self.env, concurrency=2)
        self.worker.start()
        exits.callback(self.worker.kill)
        self.web = WebProcess(self.env, log_dir / "web.log")
        exits.callback(self.web.close)

    @property
    def registry_down(self) -> bool:
        """The job registry lives on the result backend's Redis."""
        return self.victim is self.backend


@pytest.fixture(scope="module")
def rabbitmq() -> Iterator[RabbitMQServer]:
    """A RabbitMQ node of this module's own (it boots in about 10 s: shared by its tests)."""
    server = RabbitMQServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    layout = request.param
    rabbit = request.getfixturevalue("rabbitmq") if layout == "rabbitmq" else None
    if rabbit is not None:
        rabbit.start()  # up again, whatever the previous test left
    with ExitStack() as exits:
        yield Rig(exits, layout, tmp_path, rabbit)


def send_one(web: WebProcess) -> dict[str, Any]:
    """A job sent through ``delay_or_fail`` that the worker runs to SUCCESS."""
    (call,) = web.ask("fail", n=1)["calls"]
    assert call["status"] == 200 and call["state"] in ("PENDING", "PROGRESS", "SUCCESS"), call
    document = web.ask("wait", id=call["id"], state="SUCCESS", timeout=30)
    assert document["state"] == "SUCCESS", document
    return call


LAYOUTS = ["both", "backend", "broker", "rabbitmq"]


@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "warm"])
@pytest.mark.parametrize("rig", LAYOUTS, indirect=True)
def test_outage_fails_fast_runs_eagerly_and_recovers(rig: Rig, warm: bool) -> None:
    web = rig.web
    if warm:
        send_one(web)
    rig.victim.kill()

    failed = web.ask("fail", n=5)["calls"]
    for call in failed:
        assert call["status"] == 200, call
        assert call["state"] == "FAILURE" and call["error"] == "BrokerUnavailable", call
    slowest = max(call["seconds"] for call in failed)
    median = statistics.median(call["seconds"] for call in failed)
    assert slowest < FAIL_BOUND, f"delay_or_fail took {slowest:.2f} s (median {median:.3f} s)"

    eager = web.ask("eager", n=2)["calls"]
    for call in eager:
        assert call["status"] == 200, call
        assert call["state"] == "SUCCESS" and call["result"], call

    listing = web.ask("get", url="/jobtastic/jobs")
    partial = web.ask("get", url="/jobtastic/jobs.html")
    status = web.ask("get", url=f"/jobtastic/status/{failed[0]['id']}")
    if rig.registry_down:
        for answer in (listing, partial, status):
            assert answer["status"] == 503, answer
            assert answer["json"]["error"]["type"] == "ResultBackendUnavailable", answer
            assert answer["retry_after"], answer
    else:
        states = {job["id"]: job["state"] for job in listing["json"]["jobs"]}
        assert all(states[call["id"]] == "failed" for call in failed), states
        assert partial["status"] == 200 and partial["content_type"].startswith("text/html")
        assert status["status"] == 200, status
        assert status["json"]["error"]["type"] == "BrokerUnavailable", status

    rig.victim.restart()
    if rig.registry_down:  # nothing of the refused job was stored: an id nobody knows
        status = web.ask("get", url=f"/jobtastic/status/{failed[0]['id']}")
        assert status["status"] == 404 and status["json"]["state"] == "UNKNOWN", status
    # the same process, not restarted: a job sent now runs (the worker reconnects on its own)
    send_one(web)


# -- Celery's own result subscription ------------------------------------------------


@pytest.fixture
def split_app() -> Iterator[tuple[Flask, RedisServer, RedisServer]]:
    """An in-process app whose broker and result backend are Redis servers of its own."""
    with RedisServer() as broker, RedisServer() as backend:
        app = create_app(CELERY={"broker_url": broker.url, "result_backend": backend.url})
        yield app, broker, backend
        close_app(app)


@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "warm"])
def test_celery_send_task_with_the_result_backend_down_neither_hangs_nor_raises(
    split_app: tuple[Flask, RedisServer, RedisServer], warm: bool
) -> None:
    app, _broker, backend = split_app
    celery = app.extensions["jobtastic"].celery
    kept = []
    if warm:  # a result still subscribed when Redis goes
        kept.append(celery.send_task(TrackedTask.name, kwargs={"token": uuid.uuid4().hex}))
    backend.kill()
    started = time.monotonic()
    sent = celery.send_task(TrackedTask.name, kwargs={"token": uuid.uuid4().hex})
    kept.clear()  # its unsubscribe, now that Redis is gone, must not block either
    gc.collect()
    elapsed = time.monotonic() - started
    assert sent.id and elapsed < FAIL_BOUND, f"send_task took {elapsed:.2f} s"

    backend.restart()
    with app.app_context():
        state = app.extensions["jobtastic"]
        task = state.celery.tasks[TrackedTask.name]
        # the subscription is back: a result published now reaches a waiting get()
        again = celery.send_task(TrackedTask.name, kwargs={"token": "x"})
        task.backend.mark_as_done(again.id, "done")
        assert again.get(timeout=10) == "done"
