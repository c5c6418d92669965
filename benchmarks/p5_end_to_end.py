"""P5: end-to-end time per job for many small jobs through a real broker and worker.

Each run sends N jobs with distinct arguments from this process, then waits
for every result; time per job is the whole span divided by N. The same work
runs as a plain ``@celery.task`` on the same Celery app and worker.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable
from typing import Any

from celery.signals import before_task_publish

from .env import WORKER_ARGS, BenchEnv
from .report import BenchResult, Row
from .stats import fmt_seconds, median
from .tasks import SmallCachedJob, SmallJob

Sender = Callable[[int], Any]


def _variants(env: BenchEnv) -> dict[str, Sender]:
    plain = env.plain["double"]
    return {
        "plain": lambda x: plain.delay(x),
        "caching off, herd avoidance off": lambda x: SmallJob.async_or_fail(
            kwargs={"x": x}, herd_avoidance=False
        ),
        "caching off, herd avoidance on": lambda x: SmallJob.delay_or_fail(x=x),
        "caching on, herd avoidance on": lambda x: SmallCachedJob.delay_or_fail(x=x),
    }


def _one_run(send: Sender, n: int, offset: int) -> float:
    started = time.perf_counter()
    results = [send(offset + i) for i in range(n)]
    for index, job in enumerate(results):
        value = job.get(timeout=120)
        if value != (offset + index) * 2:
            raise RuntimeError(f"job {job.id} returned {value!r}")
    elapsed = time.perf_counter() - started
    del results
    gc.collect()
    return elapsed / n


def run(env: BenchEnv, quick: bool, result: BenchResult) -> None:
    env.worker()
    n, repeats = (100, 1) if quick else (1000, 7)
    variants = _variants(env)
    names = list(variants)
    per_job: dict[str, list[float]] = {name: [] for name in names}
    published: list[Any] = []

    def on_publish(sender: Any = None, **kwargs: Any) -> None:
        published.append(sender)

    before_task_publish.connect(on_publish, weak=False)
    try:
        with env.app.app_context():
            for name in names:  # warm up every path
                _one_run(variants[name], 20, random.randrange(10**12))
            for index in range(repeats):
                order = names[index % len(names) :] + names[: index % len(names)]
                for name in order:
                    published.clear()
                    per_job[name].append(_one_run(variants[name], n, random.randrange(10**12)))
                    if len(published) != n:
                        raise RuntimeError(f"{name}: {len(published)} messages for {n} jobs")
    finally:
        before_task_publish.disconnect(on_publish)
    env.check_processes()
    plain = median(per_job["plain"])
    targets = {
        "caching off, herd avoidance off": 1.2,
        "caching off, herd avoidance on": 1.5,
        "caching on, herd avoidance on": None,
    }
    for name, limit in targets.items():
        ours = median(per_job[name])
        # Each round runs every variant back to back, so a round's ratio compares
        # like with like; the median of the rounds' ratios shrugs off a round the
        # machine was busy elsewhere (a 2-core VM swings a whole run by 2x).
        ratio = median([o / p for o, p in zip(per_job[name], per_job["plain"], strict=True)])
        result.rows.append(
            Row(
                "P5",
                f"end-to-end per job, {n:,} small jobs, {name}",
                fmt_seconds(ours),
                f"plain @celery.task: {fmt_seconds(plain)}",
                ratio,
                f"<= {limit:g}x" if limit is not None else "—",
                ratio <= limit if limit is not None else None,
            )
        )
    result.rows[-1].note = (
        f"worker {' '.join(WORKER_ARGS)}; sender: one thread in this process; "
        f"{repeats} round(s) of {n} jobs per variant, order rotated; the ratio is the "
        "median of the rounds' ratios (each round's variants ran back to back)"
    )
    for name in names:
        result.details.append(f"{name}: {', '.join(fmt_seconds(v) for v in per_job[name])} per job")
    for name in targets:
        rounds = [o / p for o, p in zip(per_job[name], per_job["plain"], strict=True)]
        result.details.append(f"{name}, ratio per round: {', '.join(f'{r:.2f}x' for r in rounds)}")
