"""Jobs used by the test suite, imported by the test process and the worker.

Each records its runs in Redis (``runs:<token>``) so a test can count real
computations across processes.
"""

from __future__ import annotations

import mmap
import os
import time
from datetime import UTC, date, datetime
from datetime import time as dt_time
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any
from uuid import UUID

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


def ticks(token: str) -> int:
    return int(_redis().get(f"ticks:{token}") or 0)


def cleaned_up(token: str) -> bool:
    return bool(_redis().exists(f"cleaned:{token}"))


class CancellableTask(JobtasticTask):
    """Reports progress every ``pause`` seconds and counts its iterations
    (``ticks:<token>``), so a test sees whether it really stopped; cleans up
    on cancel (``cleaned:<token>``). ``quiet_for``: seconds before its first
    report. Results cached for a minute."""

    significant_kwargs = ["token"]
    herd_avoidance_timeout = 30
    cache_duration = 60

    def calculate_result(
        self, token: str, steps: int = 100, pause: float = 0.1, quiet_for: float = 0.0
    ) -> str:
        count_run(token)
        client = _redis()
        time.sleep(quiet_for)  # works that long before its first progress report
        for i in range(steps):
            time.sleep(pause)
            client.incr(f"ticks:{token}")
            self.update_progress(i + 1, steps)
        return token

    def on_cancel(self, task_id: str, args: tuple, kwargs: dict) -> None:
        _redis().set(f"cleaned:{kwargs['token']}", task_id)


class SilentTask(JobtasticTask):
    """Works ``seconds`` without reporting anything; cached for a minute."""

    significant_kwargs = ["token"]
    herd_avoidance_timeout = 30
    cache_duration = 60

    def calculate_result(self, token: str, seconds: float = 2.0) -> str:
        count_run(token)
        time.sleep(seconds)
        _redis().set(f"finished:{token}", 1)
        return token


class SharedLongTask(CancellableTask):
    """``CancellableTask`` whose run is shared by every owner asking the same."""

    share_across_owners = True


class RetryLaterTask(JobtasticTask):
    """Fails once, then retries after a countdown longer than its herd timeout."""

    significant_kwargs = ["token"]
    herd_avoidance_timeout = 2

    def calculate_result(self, token: str, countdown: float = 4.0) -> int:
        attempt = count_run(token)
        if attempt < 2:
            raise self.retry(countdown=countdown, max_retries=2)
        return attempt


class BriefHeartbeatTask(CancellableTask):
    """``CancellableTask`` with the shortest heartbeat (its marker lives 3 s)."""

    herd_avoidance_timeout = 2


# -- the JSON rule, step errors, details before progress -------------------------

#: What ``ReturnsTask`` returns for each ``kind``: every type strict JSON cannot
#: carry as it is, nested too.
RETURNED: dict[str, Any] = {
    "bytes": {"rows": [0, 1, 2, b"\x00raw"]},
    "datetime": datetime(2024, 5, 1, 12, 30, 5, tzinfo=UTC),
    "date": date(2024, 5, 1),
    "time": dt_time(7, 8, 9),
    "decimal": Decimal("12.50"),
    "uuid": UUID("0b8f0d39-9a38-4c55-9d7e-4a1c7b0f6a11"),
    "nan": {"mean": float("nan")},
    "infinity": [1.0, float("inf")],
    "tuple": (1, "a", None),
    "nested": {
        "when": [date(2024, 5, 1), (Decimal("1.5"), UUID(int=1))],
        "at": {"t": datetime(2024, 5, 1, 12, 0)},
    },
    "set": {"tags": {"a"}},
    "plain": {"rows": [1, 2.5, "x", None, True]},
}


class ReturnsTask(JobtasticTask):
    """Reports progress, a step, a message and a counted item, then returns ``RETURNED[kind]``."""

    significant_kwargs = ["token", "kind"]
    herd_avoidance_timeout = 30

    def calculate_result(self, token: str, kind: str, seconds: float = 0.3) -> Any:
        with self.step("Compute"):
            self.notify(f"computing {kind}")
            self.set_amount(2)
            self.add_one_success(date(2024, 5, 1))
            time.sleep(seconds)
            self.add_one_success(PurePosixPath("/srv/a.csv"))
        return RETURNED[kind]


#: The kind of secret a raw exception message gives away.
SECRET = "postgresql://admin:hunter2@db.internal/prod is unreachable"


class StepErrorTask(JobtasticTask):
    """A step fails the way ``how`` says; the job goes on unless the failure propagates."""

    significant_kwargs = ["token", "how"]
    herd_avoidance_timeout = 30

    def calculate_result(self, token: str, how: str) -> str:
        if how == "continue":
            with self.step("Load", continue_on_error=True):
                raise RuntimeError(SECRET)
        elif how == "user_facing":
            with self.step("Load", continue_on_error=True):
                raise JobFailed("The file has no header row")
        elif how == "end_step":
            self.start_step("load", "Load")
            self.end_step(error=RuntimeError(SECRET))
        elif how == "raise":
            with self.step("Load"):
                raise RuntimeError(SECRET)
        return token


class DetailsFirstTask(JobtasticTask):
    """Each item calls ``update_step`` or ``notify`` before ``update_progress``."""

    significant_kwargs = ["token"]
    herd_avoidance_timeout = 30

    def calculate_result(self, token: str, how: str, items: int = 40) -> str:
        with self.step("Rows"):
            for number in range(items):
                if how == "notify":
                    self.notify(f"row {number}")
                else:
                    self.update_step(f"row {number}")
                self.update_progress(number, items)
                time.sleep(0.05)
        return token


class DeclaredStepTask(JobtasticTask):
    """One declared step, started by its key the way ``how`` says."""

    significant_kwargs = ["token", "how"]
    herd_avoidance_timeout = 30
    steps = [("render", "Render the rows")]

    def calculate_result(self, token: str, how: str, seconds: float = 1.0) -> str:
        if how == "with":
            with self.step("render"):
                time.sleep(seconds)
        elif how == "with_key":
            with self.step("Another name", key="render"):
                time.sleep(seconds)
        else:
            self.start_step("render")
            time.sleep(seconds)
            self.end_step()
        return token
