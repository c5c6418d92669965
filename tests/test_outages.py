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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.app_factory import close_app, create_app
from tests.rig import ROOT, Broker, RigFactory, Servers
from tests.servers import RedisServer, ServerProcess
from tests.tasks import TrackedTask

#: How long one command to the web process may take before the test calls it a hang.
COMMAND_TIMEOUT = 60.0

#: The README's bound for ``delay_or_fail`` with something down ("within a second").
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


#: layout: (the ``make_servers`` broker, which server goes down).
#: ``both``: the one Redis that is broker and result backend (the quick start).
#: ``backend`` / ``broker``: a Redis broker apart from the backend's, one of them.
#: ``rabbitmq``: a RabbitMQ broker, results on Redis.
LAYOUTS: dict[str, tuple[Broker, str]] = {
    "both": ("redis", "redis"),
    "backend": ("separate-redis", "redis"),
    "broker": ("separate-redis", "broker"),
    "rabbitmq": ("rabbitmq", "broker"),
}


@dataclass
class Outage:
    """A web process of its own on servers of its own, with a real worker, and the victim."""

    web: WebProcess
    victim: ServerProcess
    #: the job registry lives on the result backend's Redis
    registry_down: bool


@pytest.fixture
def outage(
    request: pytest.FixtureRequest, make_servers: Callable[..., Servers], make_rig: RigFactory
) -> Iterator[Outage]:
    broker, victim = LAYOUTS[request.param]
    servers = make_servers(broker)
    rig = make_rig(servers=servers)  # the README's prefork worker, of this test's own
    web = WebProcess(rig.env, rig.worker.log_path.with_name("web.log"))
    try:
        server = servers.redis if victim == "redis" else servers.broker
        assert server is not None
        yield Outage(web, server, registry_down=server is servers.redis)
    finally:
        web.close()


def send_one(web: WebProcess) -> dict[str, Any]:
    """A job sent through ``delay_or_fail`` that the worker runs to SUCCESS."""
    (call,) = web.ask("fail", n=1)["calls"]
    assert call["status"] == 200 and call["state"] in ("PENDING", "PROGRESS", "SUCCESS"), call
    document = web.ask("wait", id=call["id"], state="SUCCESS", timeout=30)
    assert document["state"] == "SUCCESS", document
    return call


@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "warm"])
@pytest.mark.parametrize("outage", list(LAYOUTS), indirect=True)
def test_outage_fails_fast_runs_eagerly_and_recovers(outage: Outage, warm: bool) -> None:
    web = outage.web
    if warm:
        send_one(web)
    outage.victim.kill()

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
    if outage.registry_down:
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

    outage.victim.restart()
    if outage.registry_down:  # nothing of the refused job was stored: an id nobody knows
        status = web.ask("get", url=f"/jobtastic/status/{failed[0]['id']}")
        assert status["status"] == 404 and status["json"]["state"] == "UNKNOWN", status
    # the same process, not restarted: a job sent now runs (the worker reconnects on its own)
    send_one(web)


# -- Celery's own result subscription ------------------------------------------------


@pytest.fixture
def split_app(make_servers: Callable[..., Servers]) -> Iterator[tuple[Flask, RedisServer]]:
    """An in-process app on a Redis broker and a result-backend Redis of its own."""
    servers = make_servers("separate-redis")
    app = create_app(servers=servers.env())
    yield app, servers.redis
    close_app(app)


@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "warm"])
def test_celery_send_task_with_the_result_backend_down_neither_hangs_nor_raises(
    split_app: tuple[Flask, RedisServer], warm: bool
) -> None:
    app, backend = split_app
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
