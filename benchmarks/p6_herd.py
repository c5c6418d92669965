"""P6: 200 concurrent identical ``delay_or_fail`` calls: one computation, one id.

All threads are released at once by a barrier, each in its own app context
as a view would be; the job counts its computations in Redis.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from celery.signals import before_task_publish

from .env import BenchEnv
from .report import BenchResult, Row
from .stats import fmt_seconds, median, percentile
from .tasks import HerdJob, runs_key

CALLERS = 200


def _one_round(env: BenchEnv, token: str) -> tuple[list[float], set[str], list[BaseException]]:
    app = env.app
    barrier = threading.Barrier(CALLERS)
    latencies: list[float] = []
    ids: set[str] = set()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def call() -> None:
        try:
            with app.app_context():
                barrier.wait(timeout=30)
                started = time.perf_counter()
                job = HerdJob.delay_or_fail(token=token, seconds=1.0)
                latency = time.perf_counter() - started
            with lock:
                latencies.append(latency)
                ids.add(job.id)
        except BaseException as exc:  # reported, not swallowed
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=call, daemon=True) for _ in range(CALLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return latencies, ids, errors


def run(env: BenchEnv, quick: bool, result: BenchResult) -> None:
    env.worker()
    repeats = 1 if quick else 3
    client = env.redis()
    published: list[Any] = []

    def on_publish(sender: Any = None, **kwargs: Any) -> None:
        published.append(sender)

    p50s: list[float] = []
    p99s: list[float] = []
    maxima: list[float] = []
    rounds: list[tuple[int, int, int]] = []
    before_task_publish.connect(on_publish, weak=False)
    try:
        for _ in range(repeats):
            token = uuid.uuid4().hex
            published.clear()
            latencies, ids, errors = _one_round(env, token)
            if errors:
                raise RuntimeError(f"{len(errors)} calls raised; first: {errors[0]!r}")
            if len(latencies) != CALLERS:
                raise RuntimeError(f"only {len(latencies)} of {CALLERS} calls returned")
            with env.app.app_context():
                for task_id in ids:
                    HerdJob.AsyncResult(task_id).get(timeout=60)
            time.sleep(0.2)
            computations = int(client.get(runs_key(token)) or 0)
            rounds.append((computations, len(ids), len(published)))
            p50s.append(percentile(latencies, 50))
            p99s.append(percentile(latencies, 99))
            maxima.append(max(latencies))
    finally:
        before_task_publish.disconnect(on_publish)
        client.close()
    env.check_processes()
    met = all(computations == 1 and id_count == 1 for computations, id_count, _ in rounds)
    worst = max(rounds, key=lambda r: (r[0], r[1]))
    result.rows.append(
        Row(
            "P6",
            f"{CALLERS} concurrent identical delay_or_fail calls (threads)",
            f"{worst[0]} computation(s), {worst[1]} id(s), {worst[2]} message(s)",
            f"call latency p50 {fmt_seconds(median(p50s))}, p99 {fmt_seconds(median(p99s))}",
            None,
            "1 computation, 1 id",
            met,
            note=f"worst of {repeats} round(s); max call latency {fmt_seconds(max(maxima))}",
        )
    )
    for index, (computations, id_count, messages) in enumerate(rounds):
        result.details.append(
            f"round {index + 1}: {computations} computation(s), {id_count} id(s), "
            f"{messages} broker message(s); latency p50 {fmt_seconds(p50s[index])}, "
            f"p99 {fmt_seconds(p99s[index])}, max {fmt_seconds(maxima[index])}"
        )
