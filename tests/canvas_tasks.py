"""Parts of the canvases the suite starts, imported by the test process and the worker."""

from __future__ import annotations

import time

from flask_jobtastic import JobFailed, JobtasticTask
from tests.tasks import _redis, count_run


class RowsPart(JobtasticTask):
    """Works through ``rows`` rows, ``pause`` seconds each, reporting them as its total.

    ``fail_at``: raises a ``JobFailed`` at that row. Counts its runs under
    ``runs:<token>`` and cleans up on cancel (``cleaned:<token>`` holds a count).
    """

    significant_kwargs = ["token", "rows", "part"]
    herd_avoidance_timeout = 30

    def calculate_result(
        self, token: str, rows: int, part: int = 0, pause: float = 0.0, fail_at: int = -1
    ) -> int:
        count_run(token)
        for row in range(rows):
            if row == fail_at:
                raise JobFailed(f"part {part} could not read row {row}")
            if pause:
                time.sleep(pause)
            self.update_progress(row + 1, rows)
        return rows

    def on_cancel(self, task_id: str, args: tuple, kwargs: dict) -> None:
        _redis().incr(f"cleaned:{kwargs['token']}")


class CachedRowsPart(RowsPart):
    """``RowsPart`` whose results are cached for a minute."""

    cache_duration = 60


class SumPart(JobtasticTask):
    """A chord's body, or a chain's stage: the sum of what came before, plus ``extra``."""

    significant_kwargs = ["token"]
    herd_avoidance_timeout = 30

    def calculate_result(self, values: list[int] | int, token: str = "", extra: int = 0) -> int:
        if token:
            count_run(token)
        total = sum(values) if isinstance(values, list) else int(values)
        return total + extra


class SleepPart(JobtasticTask):
    """Sleeps ``seconds`` without reporting, then returns ``value``."""

    significant_kwargs = ["token", "value"]
    herd_avoidance_timeout = 30

    def calculate_result(self, token: str, value: int = 1, seconds: float = 5.0) -> int:
        count_run(token)
        time.sleep(seconds)
        return value


class BriefClaimPart(RowsPart):
    """``RowsPart`` with the shortest herd timeout: a dead worker's part reads lost in 3 s."""

    herd_avoidance_timeout = 2
