"""The rig the suite runs on: the README's deployment, and its variants.

A rig is a real ``celery -A tests.worker_app worker`` process, the servers it
and the web side share, and a Flask app pointed at them. The default is what
the quick start tells users to run: the default prefork pool with two
children, one Redis as broker (db 0) and result backend (db 1), memcached for
the cache. Variants: the ``threads`` and ``solo`` pools, and a RabbitMQ broker
(results stay on the Redis, as the README describes).

In a test::

    def test_x(make_rig):
        rig = make_rig(pool="threads", broker="rabbitmq")
        with rig.app.app_context():
            result = MyTask.delay_or_fail(...)
        rig.kill_child_running(result.id)   # prefork: as the OOM killer would

``make_rig`` reuses one worker per (pool, broker, concurrency) for the whole
session, each on a queue of its own, and gives every test fresh apps; with
``fresh=True`` the test gets a worker of its own, killed after it (use that
to kill or stop the worker). ``make_servers`` gives a test servers of its own
to kill and restart; pass them to ``make_rig(servers=...)``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil
import pytest
from flask import Flask

from tests.app_factory import close_app, create_app
from tests.servers import MemcachedServer, RabbitMQServer, RedisServer

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"

Pool = Literal["prefork", "threads", "solo"]
#: ``redis``: the one Redis is broker and backend (the quick start).
#: ``rabbitmq``: a RabbitMQ broker, results on the Redis.
#: ``separate-redis``: a Redis broker apart from the result backend's Redis,
#: only for tests about one of them failing alone.
Broker = Literal["redis", "rabbitmq", "separate-redis"]

POOLS: tuple[Pool, ...] = ("prefork", "threads", "solo")
BROKERS: tuple[Broker, ...] = ("redis", "rabbitmq")

#: Run a test once per broker: its ``app`` (and ``broker_name``) follow the parameter.
every_broker = pytest.mark.parametrize("broker_name", BROKERS)

#: Redis databases of one rig's Redis.
BROKER_DB, BACKEND_DB, COUNTER_DB = 0, 1, 2

#: The queue of the session's default worker (Celery's default).
DEFAULT_QUEUE = "celery"


def redis_url(server: RedisServer, db: int) -> str:
    return f"redis://{server.host}:{server.port}/{db}"


class WorkerProcess:
    """A real ``celery -A tests.worker_app worker`` process.

    ``env`` overrides the ``JOBTASTIC_TEST_*`` variables the worker app reads
    its servers (and queue) from; the default pool and concurrency are what
    the README's ``celery ... worker`` gives users.
    """

    def __init__(
        self,
        log_path: Path,
        concurrency: int = 2,
        pool: Pool = "prefork",
        env: dict[str, str] | None = None,
    ) -> None:
        self.log_path = log_path
        self.concurrency = concurrency
        self.pool = pool
        self.env = dict(env or {})
        self.nodename = f"test-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        """The worker's main process (the one that consumes from the broker)."""
        assert self.process is not None, "the worker was never started"
        return self.process.pid

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", "celery", "-A", "tests.worker_app", "worker"]
        if self.pool != "prefork":  # prefork is the default: the README's command as is
            argv.append(f"--pool={self.pool}")
        if self.pool != "solo":
            argv.append(f"--concurrency={self.concurrency}")
        return argv + [
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            self.nodename,
        ]

    def start(self, timeout: float = 60) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"celery worker exited early:\n{self.log_tail()}")
            if b" ready." in self.log_path.read_bytes():
                return
            time.sleep(0.1)
        raise RuntimeError(f"celery worker did not get ready:\n{self.log_tail()}")

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def kill(self) -> None:
        """SIGKILL the worker and its pool, as a lost machine would."""
        if self.alive and self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 15) -> None:
        """Warm shutdown (running jobs finish), killed after ``timeout``."""
        self.request_stop()
        self.wait_stopped(timeout)

    def request_stop(self) -> None:
        """Ask for a warm shutdown without waiting (to stop several at once)."""
        if self.alive and self.process is not None:
            os.killpg(self.process.pid, signal.SIGTERM)

    def wait_stopped(self, timeout: float = 15) -> None:
        """Wait for the shutdown asked for; SIGKILL after ``timeout``."""
        if self.process is not None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    # -- prefork pool children ---------------------------------------------------

    def pool_children(self) -> list[psutil.Process]:
        """The prefork pool's processes (empty for the threads and solo pools)."""
        if not self.alive:
            return []
        with contextlib.suppress(psutil.NoSuchProcess):
            return psutil.Process(self.pid).children()
        return []

    def wait_for_pool_children(self, count: int | None = None, timeout: float = 15) -> list[int]:
        """Pids of the pool children once there are ``count`` (the concurrency) alive."""
        wanted = self.concurrency if count is None else count
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = [child.pid for child in self.pool_children() if child.is_running()]
            if len(pids) >= wanted:
                return pids
            time.sleep(0.05)
        raise AssertionError(f"the worker has not {wanted} pool children:\n{self.log_tail()}")

    def kill_pool_child(self, pid: int | None = None) -> int:
        """SIGKILL one pool child (``pid``, or any), as the OOM killer would.

        The main process lives on, reports the child's job as lost
        (``WorkerLostError``) and forks a replacement. Returns the pid killed.
        """
        children = {child.pid for child in self.pool_children()}
        assert children, f"no pool children to kill (pool {self.pool})"
        target = pid if pid is not None else min(children)
        assert target in children, f"{target} is not a pool child of {self.pid}: {children}"
        os.kill(target, signal.SIGKILL)
        with contextlib.suppress(psutil.NoSuchProcess):
            child = psutil.Process(target)
            deadline = time.monotonic() + 5
            while child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                assert time.monotonic() < deadline, f"pool child {target} outlived SIGKILL"
                time.sleep(0.01)
        return target


@dataclass
class Servers:
    """Where a rig's broker, result backend, run counters and cache live."""

    redis: RedisServer
    memcached: MemcachedServer
    broker_name: Broker = "redis"
    #: the broker's server: ``redis`` itself, a RabbitMQ node or a Redis of its own
    broker: RedisServer | RabbitMQServer | None = None
    #: run counters (tests/tasks.py) live on a Redis nobody kills
    counter_url: str = ""

    def __post_init__(self) -> None:
        if self.broker is None:
            self.broker = self.redis
        if not self.counter_url:
            self.counter_url = redis_url(self.redis, COUNTER_DB)

    @property
    def broker_url(self) -> str:
        if isinstance(self.broker, RedisServer):
            return redis_url(self.broker, BROKER_DB)
        assert self.broker is not None
        return self.broker.url

    @property
    def backend_url(self) -> str:
        return redis_url(self.redis, BACKEND_DB)

    def env(self, queue: str = DEFAULT_QUEUE) -> dict[str, str]:
        """What ``tests.app_factory.create_app`` (and so the worker) reads."""
        return {
            "JOBTASTIC_TEST_BROKER_URL": self.broker_url,
            "JOBTASTIC_TEST_BACKEND_URL": self.backend_url,
            "JOBTASTIC_TEST_COUNTER_URL": self.counter_url,
            "JOBTASTIC_TEST_MEMCACHED": self.memcached.address,
            "JOBTASTIC_TEST_QUEUE": queue,
        }


@dataclass
class Rig:
    """A worker, its servers and a Flask app sending to it."""

    pool: Pool
    servers: Servers
    queue: str
    worker: WorkerProcess
    app: Flask
    _apps: list[Flask] = field(default_factory=list, repr=False)

    @property
    def broker(self) -> Broker:
        return self.servers.broker_name

    @property
    def broker_url(self) -> str:
        return self.servers.broker_url

    @property
    def env(self) -> dict[str, str]:
        return self.servers.env(self.queue)

    @property
    def celery(self) -> Any:
        return self.app.extensions["jobtastic"].celery

    def make_app(self, **config: Any) -> Flask:
        """Another app on the same servers and queue (closed with the rig).

        Build it before sending: the class-level ``delay`` calls go through the
        app bound last.
        """
        app = create_app(servers=self.env, **config)
        self._apps.append(app)
        return app

    def child_running(self, task_id: str, timeout: float = 10) -> int:
        """The pid of the prefork child running ``task_id``, asked of the worker itself."""
        inspect = self.celery.control.inspect(destination=[self.worker.nodename], timeout=1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for jobs in (inspect.active() or {}).values():
                for job in jobs:
                    if job.get("id") == task_id and job.get("worker_pid"):
                        return int(job["worker_pid"])
            time.sleep(0.1)
        raise AssertionError(f"no pool child of {self.worker.nodename} runs {task_id}")

    def kill_child_running(self, task_id: str) -> int:
        """SIGKILL the pool child running ``task_id`` (the OOM killer's way); its pid."""
        return self.worker.kill_pool_child(self.child_running(task_id))

    def close(self) -> None:
        for app in self._apps:
            close_app(app)
        self._apps.clear()


class RigPool:
    """The session's servers and the workers kept for it, one per kind of rig."""

    def __init__(self, servers: Servers, rabbitmq: Callable[[], RabbitMQServer]) -> None:
        self.servers = servers
        self._rabbitmq = rabbitmq
        self._workers: dict[tuple[Pool, Broker, int], WorkerProcess] = {}

    def shared_servers(self, broker: Broker) -> Servers:
        if broker == "redis":
            return self.servers
        if broker == "rabbitmq":
            return Servers(self.servers.redis, self.servers.memcached, "rabbitmq", self._rabbitmq())
        raise ValueError(f"no shared servers for the {broker!r} broker: use make_servers")

    def worker(self, pool: Pool, broker: Broker, concurrency: int) -> tuple[WorkerProcess, str]:
        """The session's worker of that kind (restarted if a test killed it), and its queue."""
        key = (pool, broker, concurrency)
        queue = queue_name(pool, broker, concurrency)
        worker = self._workers.get(key)
        if worker is None or not worker.alive:
            if worker is not None:
                worker.kill()
            env = self.shared_servers(broker).env(queue)
            log = ARTIFACTS / f"worker-{pool}-{broker}-{concurrency}.log"
            worker = WorkerProcess(log, concurrency=concurrency, pool=pool, env=env)
            worker.start()
            self._workers[key] = worker
        return worker, queue

    def close(self) -> None:
        workers = list(self._workers.values())
        for worker in workers:
            worker.request_stop()
        deadline = time.monotonic() + 5
        for worker in workers:
            worker.wait_stopped(max(0.1, deadline - time.monotonic()))
        self._workers.clear()


def queue_name(pool: Pool, broker: Broker, concurrency: int) -> str:
    if (pool, broker, concurrency) == ("prefork", "redis", 2):
        return DEFAULT_QUEUE
    return f"jobtastic-{pool}-{broker}-{concurrency}"


def delete_queue(rig: Rig) -> None:
    """Drop a rig's queue from its broker (best effort: a test may have killed it)."""
    with contextlib.suppress(Exception), rig.celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)
        connection.default_channel.queue_delete(rig.queue)


class RigFactory:
    """``make_rig`` of one test: what it started is cleaned up after it."""

    def __init__(self, pool: RigPool, log_dir: Path) -> None:
        self.pool = pool
        self.log_dir = log_dir
        self.rigs: list[Rig] = []
        self.own_workers: list[WorkerProcess] = []

    def __call__(
        self,
        pool: Pool = "prefork",
        broker: Broker = "redis",
        *,
        concurrency: int = 2,
        fresh: bool = False,
        servers: Servers | None = None,
        worker_env: dict[str, str] | None = None,
        **app_config: Any,
    ) -> Rig:
        """A rig of that pool and broker; ``app_config`` goes to its app,
        ``worker_env`` to the environment of a worker of its own."""
        fresh = fresh or worker_env is not None
        if servers is not None:
            broker = servers.broker_name
            fresh = True  # servers of a test's own: a worker of its own too
        if fresh:
            servers = servers or self.pool.shared_servers(broker)
            queue = f"jobtastic-{pool}-{broker}-{uuid.uuid4().hex[:8]}"
            log = self.log_dir / f"worker-{pool}-{broker}-{len(self.own_workers)}.log"
            env = {**servers.env(queue), **(worker_env or {})}
            worker = WorkerProcess(log, concurrency, pool, env=env)
            self.own_workers.append(worker)
            worker.start()
        else:
            worker, queue = self.pool.worker(pool, broker, concurrency)
            servers = self.pool.shared_servers(broker)
        app = create_app(servers=servers.env(queue), **app_config)
        rig = Rig(pool, servers, queue, worker, app, [app])
        self.rigs.append(rig)
        return rig

    def close(self) -> None:
        for worker in self.own_workers:
            worker.kill()
        for rig in self.rigs:
            if rig.worker in self.own_workers:
                delete_queue(rig)
            rig.close()


@contextlib.contextmanager
def own_servers(
    broker: Broker, rabbitmq: Callable[[], RabbitMQServer], counter_url: str
) -> Iterator[Servers]:
    """A Redis and memcached of their own, with the broker asked for.

    For ``rabbitmq``, ``rabbitmq()`` gives the node (it boots in seconds, so
    fault tests share one they may kill: it is started again if down).
    """
    with RedisServer() as redis_server, MemcachedServer() as memcached:
        broker_server: RedisServer | RabbitMQServer = redis_server
        with contextlib.ExitStack() as exits:
            if broker == "separate-redis":
                broker_server = exits.enter_context(RedisServer())
            elif broker == "rabbitmq":
                broker_server = rabbitmq()
                broker_server.start()
            yield Servers(redis_server, memcached, broker, broker_server, counter_url)
