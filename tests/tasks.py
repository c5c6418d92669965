"""Jobs used by the test suite, imported by the test process and the worker.

Each records its runs in Redis (``runs:<token>``) so a test can count real
computations across processes.
"""

from __future__ import annotations

import mmap
import os
import time
from typing import Any

import redis

from flask_jobtastic import JobFailed, JobtasticTask

_leak: list[mmap.mmap] = []


def _redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["JOBTASTIC_TEST_COUNTER_URL"])


def count_run(token: str) -> int:
    return int(_redis().incr(f"runs:{token}"))


def runs(token: str) -> int:
    return int(_redis().get(f"runs:{token}") or 0)


class DivisionTask(JobtasticTask):
    """The README's example: divide numerators by denominators, with progress."""

    significant_kwargs = [("numerators", str), ("denominators", str)]
    herd_avoidance_timeout = 60
    cache_duration = 0

    def calculate_result(
        self, numerators: list[int], denominators: list[int], token: str = "", delay: float = 0.0
    ) -> list[float]:
        if token:
            count_run(token)
        total = len(numerators)
        out: list[float] = []
        for count, (numerator, denominator) in enumerate(
            zip(numerators, denominators, strict=True)
        ):
            out.append(numerator / denominator)
            self.update_progress(count + 1, total)
            if delay:
                time.sleep(delay)
        return out


class CountedTask(JobtasticTask):
    """Sleeps, counts its runs; cached for a minute."""

    significant_kwargs = ["token", "value"]
    herd_avoidance_timeout = 30
    cache_duration = 60

    def calculate_result(self, token: str, value: Any = None, seconds: float = 0.5) -> dict:
        count_run(token)
        time.sleep(seconds)
        return {"value": value, "token": token}


class PositionalTask(JobtasticTask):
    significant_kwargs = ["a", "b"]
    herd_avoidance_timeout = 30
    cache_duration = 60

    def calculate_result(self, a: str, b: str, token: str = "") -> str:
        count_run(token)
        return a + b


class FailingTask(JobtasticTask):
    significant_kwargs = ["token"]
    herd_avoidance_timeout = 30
    cache_duration = 60

    def calculate_result(self, token: str, user_facing: bool = False) -> None:
        count_run(token)
        time.sleep(0.2)
        if user_facing:
            raise JobFailed("The CSV header is missing 'email'")
        raise ValueError("secret internal detail /etc/passwd")


class RetryingTask(JobtasticTask):
    significant_kwargs = ["token"]
    herd_avoidance_timeout = 30

    def calculate_result(self, token: str) -> int:
        attempt = count_run(token)
        if attempt < 2:
            raise self.retry(countdown=0.1, max_retries=3)
        return attempt


class SlowProgressTask(JobtasticTask):
    """Reports progress over ``seconds``; used for PROGRESS, revoke and throttle tests."""

    significant_kwargs = ["token"]
    herd_avoidance_timeout = 30

    def calculate_result(self, token: str, seconds: float = 2.0, steps: int = 20) -> str:
        count_run(token)
        for i in range(steps):
            time.sleep(seconds / steps)
            self.update_progress(i + 1, steps)
        return token


class UnserializableTask(JobtasticTask):
    significant_kwargs = ["token"]
    herd_avoidance_timeout = 30

    def calculate_result(self, token: str) -> Any:
        return {"when": object()}


class LeakyTask(JobtasticTask):
    significant_kwargs = ["token"]
    herd_avoidance_timeout = 30
    memleak_threshold = 10

    def calculate_result(self, token: str, megabytes: int = 0) -> int:
        if megabytes:
            # Fresh pages of its own: memory freed earlier in the process (a long
            # test session frees plenty) could otherwise serve a heap allocation
            # without the resident size growing at all.
            size = megabytes * 1_000_000
            block = mmap.mmap(-1, size)
            for offset in range(0, size, mmap.PAGESIZE):
                block[offset] = 1  # touch every page, so it becomes resident
            _leak.append(block)
        return megabytes


class MillionProgressTask(JobtasticTask):
    herd_avoidance_timeout = 60

    def calculate_result(self, n: int) -> float:
        started = time.monotonic()
        for i in range(n):
            self.update_progress(i + 1, n)
        return time.monotonic() - started


class StepsTask(JobtasticTask):
    """Declared steps, a nested failing step that the job survives, messages."""

    significant_kwargs = ["token"]
    herd_avoidance_timeout = 30
    steps = [("fetch", "Fetch the data"), ("check", "Check it"), ("write", "Write it")]

    def calculate_result(self, token: str, pause: float = 0.6) -> str:
        time.sleep(pause)  # long enough for a first poll to see every step pending
        with self.step("Fetch the data", key="fetch"):
            self.notify("fetched 3 rows")
            time.sleep(0.2)
        with self.step("Check it", key="check"):
            with self.step("Call the flaky service", continue_on_error=True):
                raise ConnectionError("flaky service said no")
            self.notify("checked, one call failed")
        self.start_step("write")
        self.update_step("writing row 1")
        time.sleep(0.2)
        self.end_step()
        return token


class CountingTask(JobtasticTask):
    """Counts items, failing the ones whose number is in ``bad``."""

    significant_kwargs = ["token"]
    herd_avoidance_timeout = 30

    def calculate_result(self, token: str, items: int = 10, bad: list | None = None) -> dict:
        bad = bad or []
        self.set_amount(items)
        for number in range(items):
            time.sleep(0.05)
            self.track(number not in bad, item=f"item-{number}")
        return {"done": items - len(bad)}


class TrackedTask(JobtasticTask):
    significant_kwargs = ["token"]
    herd_avoidance_timeout = 30
    track_state = True
    description = "A tracked test job"

    def calculate_result(self, token: str, seconds: float = 0.3, fail: bool = False) -> str:
        for i in range(5):
            time.sleep(seconds / 5)
            self.update_progress(i + 1, 5)
        if fail:
            raise JobFailed("tracked job failed on purpose")
        return token


class CachedProgressTask(JobtasticTask):
    """Reports progress over ``seconds``, counts its runs; its result is cached for a minute."""

    significant_kwargs = ["token"]
    herd_avoidance_timeout = 30
    cache_duration = 60

    def calculate_result(self, token: str, seconds: float = 3.0, steps: int = 30) -> str:
        count_run(token)
        for i in range(steps):
            time.sleep(seconds / steps)
            self.update_progress(i + 1, steps)
        return token


class ShortHerdTask(JobtasticTask):
    """A tracked job whose claim lapses 3 s after its worker dies; counts its runs."""

    significant_kwargs = ["token"]
    herd_avoidance_timeout = 3
    track_state = True
    description = "A job with a short herd timeout"

    def calculate_result(self, token: str, seconds: float = 10.0) -> str:
        count_run(token)
        steps = max(1, round(seconds / 0.1))
        for i in range(steps):
            time.sleep(seconds / steps)
            self.update_progress(i + 1, steps)
        return token


class SoakTask(JobtasticTask):
    """A small job with progress, for the soak run: returns n squared."""

    significant_kwargs = ["n", "salt"]
    herd_avoidance_timeout = 60

    def calculate_result(self, n: int, salt: str) -> int:
        for i in range(10):
            self.update_progress(i + 1, 10)
        return n * n


class SharedReportTask(JobtasticTask):
    """The same answer for everyone: shared between owners."""

    significant_kwargs = ["token"]
    herd_avoidance_timeout = 30
    cache_duration = 60
    share_across_owners = True

    def calculate_result(self, token: str) -> str:
        count_run(token)
        time.sleep(0.3)
        return token


class AppContextTask(JobtasticTask):
    """Reads the Flask app and its config: the job runs inside the app context."""

    significant_kwargs = ["token"]
    herd_avoidance_timeout = 10

    def calculate_result(self, token: str) -> dict:
        from flask import current_app

        return {"app": current_app.name, "prefix": current_app.config["JOBTASTIC_URL_PREFIX"]}
