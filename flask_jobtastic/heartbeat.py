"""Keep running jobs' claims alive from one thread per worker process.

While a job runs, its herd key and its ``alive`` marker in the result
backend are renewed every third of ``herd_avoidance_timeout``, whether or
not the job reports progress. When the worker dies (SIGKILL, OOM, a lost
machine), renewal stops: the herd key expires so the next identical call
computes again, and the missing marker lets the status endpoint report the
job as lost instead of "running" forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger("flask_jobtastic")

#: Shortest life of a claim, so a tiny timeout cannot make renewals spin.
MIN_TIMEOUT = 2.0


def alive_for(herd_avoidance_timeout: float | None) -> int:
    """Seconds a job's alive marker and renewed herd key live without a renewal."""
    return int(max(float(herd_avoidance_timeout or 0), MIN_TIMEOUT)) + 1


@dataclass
class _Claim:
    renew: Callable[[], None]
    every: float
    next_at: float


class Heartbeat:
    """Renews registered claims on a daemon thread; one per process."""

    def __init__(self) -> None:
        self._claims: dict[str, _Claim] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        #: When the thread wakes next on its own; an earlier claim wakes it sooner.
        self._wakes_at = float("inf")
        #: How long the thread stays up after the last claim went, so that a
        #: stream of short jobs (each gone before its first beat) does not wake
        #: it once per job: the shortest first delay asked for.
        self._linger = MIN_TIMEOUT / 3
        #: A claim was added since the thread last found nothing to renew.
        self._added = False

    def add(
        self, task_id: str, timeout: float, renew: Callable[[], None], first_in: float | None = None
    ) -> None:
        """Call ``renew()`` after ``first_in`` seconds (at most, and by default,
        ``timeout / 3``), then every ``timeout / 3`` seconds, until ``remove``."""
        every = max(timeout, MIN_TIMEOUT) / 3
        first_in = every if first_in is None else min(max(first_in, 0.0), every)
        next_at = time.monotonic() + first_in
        with self._lock:
            if first_in < self._linger:
                self._linger = first_in
            self._added = True
            self._claims[task_id] = _Claim(renew, every, next_at)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="jobtastic-heartbeat", daemon=True
                )
                self._thread.start()
            wake = next_at < self._wakes_at
        if wake:
            self._wake.set()

    def remove(self, task_id: str) -> None:
        with self._lock:
            self._claims.pop(task_id, None)

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            with self._lock:
                due = [(tid, c) for tid, c in self._claims.items() if c.next_at <= now]
                for _, claim in due:
                    claim.next_at = now + claim.every
                if self._claims:
                    soonest = max(min(c.next_at for c in self._claims.values()) - now, 0.01)
                    wait: float | None = soonest
                    self._wakes_at = now + soonest
                elif self._added:  # nothing to renew now: stay up a little for the next
                    wait = self._linger
                    self._wakes_at = now + wait
                else:  # no claim came while lingering: sleep until one is added
                    wait, self._wakes_at = None, float("inf")
                self._added = False
            for task_id, claim in due:
                try:
                    claim.renew()
                except Exception:
                    logger.warning("Could not renew the claim of job %s", task_id, exc_info=True)
            self._wake.wait(wait)
            with self._lock:
                self._wake.clear()
                self._wakes_at = float("-inf")  # awake: the next pass sees every claim


#: The process's heartbeat (Celery's prefork children each get their own thread).
heartbeat = Heartbeat()
