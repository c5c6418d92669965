"""The jobs the benchmarks run, imported by the benchmark process, the worker and gunicorn."""

from __future__ import annotations

import os
import time

import redis

from flask_jobtastic import JobtasticTask

_clients: dict[int, redis.Redis] = {}


def bench_redis() -> redis.Redis:
    """A client of the result-backend Redis, one per process (safe across prefork)."""
    pid = os.getpid()
    client = _clients.get(pid)
    if client is None:
        client = _clients[pid] = redis.Redis.from_url(os.environ["BENCH_BACKEND_URL"])
    return client


def runs_key(token: str) -> str:
    return f"bench:runs:{token}"


def stop_key(token: str) -> str:
    return f"bench:stop:{token}"


def marks_key(token: str) -> str:
    return f"bench:marks:{token}"


class ProgressLoopJob(JobtasticTask):
    """P1: ``update_progress`` on every item of a loop; returns the loop's seconds."""

    herd_avoidance_timeout = 60

    def calculate_result(self, n: int, pause: float = 0.0) -> float:
        update = self.update_progress
        if pause:
            started = time.perf_counter()
            for i in range(n):
                time.sleep(pause)
                update(i + 1, n)
            return time.perf_counter() - started
        started = time.perf_counter()
        for i in range(n):
            update(i + 1, n)
        return time.perf_counter() - started


class SmallJob(JobtasticTask):
    """P3, P5: tiny work, no result caching."""

    significant_kwargs = ["x"]
    herd_avoidance_timeout = 30

    def calculate_result(self, x: int) -> int:
        return x * 2


class SmallCachedJob(JobtasticTask):
    """P4, P5: the same tiny work with its result cached for ten minutes."""

    significant_kwargs = ["x"]
    herd_avoidance_timeout = 30
    cache_duration = 600

    def calculate_result(self, x: int) -> int:
        return x * 2


class HerdJob(JobtasticTask):
    """P6: counts its computations, then takes ``seconds``."""

    significant_kwargs = ["token"]
    herd_avoidance_timeout = 30
    cache_duration = 60

    def calculate_result(self, token: str, seconds: float = 1.0) -> str:
        bench_redis().incr(runs_key(token))
        time.sleep(seconds)
        return token


class HoldJob(JobtasticTask):
    """P2: stays in PROGRESS, reporting, until told to stop (or ``seconds`` pass)."""

    significant_kwargs = ["token"]
    herd_avoidance_timeout = 30

    def calculate_result(self, token: str, seconds: float = 120.0) -> str:
        client = bench_redis()
        steps = max(int(seconds / 0.2), 2)
        for i in range(steps):
            if client.exists(stop_key(token)):
                break
            self.update_progress(i + 1, steps + 1)
            time.sleep(0.2)
        return token


class MarkedProgressJob(JobtasticTask):
    """P7: writes progress after each gap and records the wall-clock time of each write."""

    significant_kwargs = ["token"]
    herd_avoidance_timeout = 30

    def calculate_result(self, token: str, gaps: list[float], tail: float = 1.5) -> int:
        client = bench_redis()
        total = len(gaps) + 1  # never reaches 100 %: every write is a PROGRESS write
        for i, gap in enumerate(gaps):
            time.sleep(gap)
            written_at = time.time()
            self.update_progress(i + 1, total)
            client.hset(marks_key(token), str(i + 1), repr(written_at))
        time.sleep(tail)  # a poller gets to see the last write before the job ends
        return len(gaps)
