"""Shared fixtures: throwaway Redis and memcached servers, a real Celery worker,
and the Flask app and client wired to them."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from tests.servers import MemcachedServer, RedisServer

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """Result backend and run counters."""
    with RedisServer() as server:
        yield server
        # Celery results unsubscribe from the backend when collected: let them
        # do it while the server still runs.
        gc.collect()


@pytest.fixture(scope="session")
def broker_server() -> Iterator[RedisServer]:
    """The broker of the shared worker; fault tests use servers of their own."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def memcached_server() -> Iterator[MemcachedServer]:
    with MemcachedServer() as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def test_environment(
    redis_server: RedisServer, broker_server: RedisServer, memcached_server: MemcachedServer
) -> Iterator[None]:
    """Point the app factory (and the worker it starts) at the throwaway servers."""
    saved = dict(os.environ)
    os.environ.update(
        JOBTASTIC_TEST_BROKER_URL=broker_server.url,
        JOBTASTIC_TEST_BACKEND_URL=redis_server.url,
        JOBTASTIC_TEST_COUNTER_URL=redis_server.url.rsplit("/", 1)[0] + "/1",
        JOBTASTIC_TEST_MEMCACHED=memcached_server.address,
    )
    yield
    os.environ.clear()
    os.environ.update(saved)


class WorkerProcess:
    """A real ``celery worker`` process running ``tests.worker_app``."""

    def __init__(self, log_path: Path, concurrency: int = 8) -> None:
        self.log_path = log_path
        self.concurrency = concurrency
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.worker_app",
                "worker",
                "--pool=threads",
                f"--concurrency={self.concurrency}",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"test-{uuid.uuid4().hex[:6]}@%h",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"celery worker exited early:\n{self.log_path.read_text()}")
            if b" ready." in self.log_path.read_bytes():
                return
            time.sleep(0.1)
        raise RuntimeError(f"celery worker did not get ready:\n{self.log_path.read_text()}")

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a lost machine would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def celery_worker(test_environment: None) -> Iterator[WorkerProcess]:
    """One real worker for the session, on the Redis broker and result backend."""
    worker = WorkerProcess(ARTIFACTS / "worker.log")
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def app() -> Iterator[Flask]:
    from tests.app_factory import close_app, create_app

    app = create_app()
    yield app
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
