"""The throwaway world a benchmark run needs, started lazily and torn down at the end.

Redis (broker), Redis (result backend), memcached, a ``celery worker``
subprocess and a gunicorn subprocess. The worker and gunicorn only start
when a selected benchmark asks for them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from flask import Flask

from tests.servers import MemcachedServer, RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent

#: The one server setting both status views are measured under (P2, P3, P7).
#: One worker process: with two, wrk's few keep-alive connections split
#: between them by chance (all on one, or half each), which made runs bimodal.
GUNICORN_ARGS = ["-w", "1", "-k", "gthread", "--threads", "4"]

#: The worker: Celery's default prefork pool, one child per core.
WORKER_ARGS = ["--pool=prefork", "--concurrency=2"]


class ManagedProcess:
    """A subprocess in its own session, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if not self.alive:
            code = self.process.returncode if self.process else None
            raise RuntimeError(f"{self.name} exited (code {code}):\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the process group we started, SIGKILL it if it lingers."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


class BenchEnv:
    """Servers, worker and web server of one benchmark run."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="jobtastic-bench-"))
        self.broker = RedisServer()
        self.backend = RedisServer()
        self.memcached = MemcachedServer()
        self._app: Flask | None = None
        self._worker: ManagedProcess | None = None
        self._web: ManagedProcess | None = None
        self._web_port = 0
        self._saved_env: dict[str, str] = {}

    # -- life cycle ----------------------------------------------------------

    def start(self) -> None:
        self.broker.start()
        self.backend.start()
        self.memcached.start()
        self._saved_env = dict(os.environ)
        os.environ.update(
            BENCH_BROKER_URL=self.broker.url,
            BENCH_BACKEND_URL=self.backend.url,
            BENCH_MEMCACHED=self.memcached.address,
        )

    def close(self) -> None:
        for process in (self._web, self._worker):
            if process is not None:
                with contextlib.suppress(Exception):
                    process.stop()
        if self._app is not None:
            _close_app(self._app)
        for server in (self.memcached, self.backend, self.broker):
            with contextlib.suppress(Exception):
                server.stop()
        if self._saved_env:
            os.environ.clear()
            os.environ.update(self._saved_env)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> BenchEnv:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what benchmarks ask for -------------------------------------------------

    @property
    def app(self) -> Flask:
        """The Flask app in this process (the sending side), built on first use."""
        if self._app is None:
            from benchmarks.app import create_app

            self._app = create_app()
        return self._app

    @property
    def plain(self) -> dict[str, Any]:
        from benchmarks.app import PLAIN

        return self.app.extensions[PLAIN]

    def redis(self) -> Any:
        import redis

        return redis.Redis.from_url(self.backend.url)

    def worker(self) -> ManagedProcess:
        """A running ``celery worker`` that answered a job."""
        if self._worker is not None and self._worker.alive:
            return self._worker
        worker = ManagedProcess(
            "celery worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "benchmarks.worker",
                "worker",
                *WORKER_ARGS,
                "--loglevel=WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"bench-{uuid.uuid4().hex[:6]}@%h",
            ],
            self.workdir / "worker.log",
        )
        worker.start()
        self._worker = worker
        double = self.plain["double"]
        deadline = time.monotonic() + 60
        while True:
            worker.check_alive()
            try:
                if double.apply_async((21,)).get(timeout=2) == 42:
                    return worker
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the celery worker did not answer within 60 s:\n{worker.log_tail()}"
                    ) from None

    def web(self) -> str:
        """Base URL of a running gunicorn serving ``benchmarks.wsgi:app``."""
        if self._web is not None and self._web.alive:
            return f"http://127.0.0.1:{self._web_port}"
        port = free_port()
        web = ManagedProcess(
            "gunicorn",
            [
                sys.executable,
                "-m",
                "gunicorn",
                *GUNICORN_ARGS,
                "-b",
                f"127.0.0.1:{port}",
                "--log-level",
                "warning",
                "--timeout",
                "120",
                "benchmarks.wsgi:app",
            ],
            self.workdir / "gunicorn.log",
        )
        web.start()
        self._web, self._web_port = web, port
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            web.check_alive()
            try:
                with urllib.request.urlopen(f"{base}/bench/ping", timeout=2) as response:
                    if response.status == 200:
                        return base
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"gunicorn did not answer within 30 s:\n{web.log_tail()}"
                    ) from None
            time.sleep(0.1)

    def check_processes(self) -> None:
        """Raise with the log if the worker or gunicorn died during a benchmark."""
        for process in (self._worker, self._web):
            if process is not None:
                process.check_alive()


def _close_app(app: Flask) -> None:
    """Close the sockets this process's Celery app opened."""
    import gc

    state = app.extensions.get("jobtastic")
    if state is None:
        return
    gc.collect()
    celery = state.celery
    with contextlib.suppress(Exception):
        celery.close()
    backend = celery.backend
    client = getattr(backend, "client", None)
    if client is not None and hasattr(client, "connection_pool"):
        with contextlib.suppress(Exception):
            client.connection_pool.disconnect()
    consumer = getattr(backend, "result_consumer", None)
    pubsub = getattr(consumer, "_pubsub", None)
    if pubsub is not None:
        with contextlib.suppress(Exception):
            pubsub.close()
        # Results still referenced (say by an interrupted benchmark's frame) unsubscribe
        # when collected; with no pubsub they skip it instead of retrying a stopped Redis.
        consumer._pubsub = None
