"""P4: ``delay_or_fail`` answered from the result cache vs a raw memcached get.

The alternative is what a user would write by hand: a pymemcache ``get`` of
the key they chose plus ``AsyncResult(id)``. Broker messages are counted
with Celery's ``before_task_publish`` signal while both loops run.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from celery.signals import before_task_publish
from pymemcache.client.base import Client

from flask_jobtastic import keys

from .env import BenchEnv
from .report import BenchResult, Row
from .stats import fmt_seconds, median
from .tasks import SmallCachedJob


def _wait_cached(cache: Any, key: str, timeout: float = 10) -> str:
    """The worker caches the id in ``on_success``, just after the result is stored."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cache.get(key)
        if value:
            return str(value)
        time.sleep(0.01)
    raise RuntimeError(f"the result id never appeared under {key}")


def run(env: BenchEnv, quick: bool, result: BenchResult) -> None:
    env.worker()
    app = env.app
    state = app.extensions["jobtastic"]
    celery = state.celery
    repeats, chunks, chunk = (3, 3, 100) if quick else (7, 10, 200)
    calls = chunks * chunk
    x = random.randrange(10**9)
    with app.app_context():
        first = SmallCachedJob.delay_or_fail(x=x)
        first.get(timeout=30)
        task = celery.tasks[SmallCachedJob.name]
        key = keys.result_key(task.cache_key_for((), {"x": x}))
        cached_id = _wait_cached(state.cache_backend, key)
        if cached_id != first.id:
            raise RuntimeError(f"cached id {cached_id} is not the job's {first.id}")
    stored_key = state.cache_backend.memcached_key(key)
    host, port = env.memcached.host, env.memcached.port
    # values are JSON text (PyMemcacheCache never pickles): a hand-written reader decodes it
    raw = Client((host, port), connect_timeout=0.5, timeout=0.5)

    published: list[Any] = []

    def on_publish(sender: Any = None, **kwargs: Any) -> None:
        published.append(sender)

    before_task_publish.connect(on_publish, weak=False)
    ours: list[float] = []
    theirs: list[float] = []
    try:
        with app.app_context():
            for _ in range(50):  # warm up both paths
                SmallCachedJob.delay_or_fail(x=x)
                celery.AsyncResult(json.loads(raw.get(stored_key)))
            published.clear()
            for _ in range(repeats):
                # Alternate in chunks so a noisy neighbour slows both sides alike.
                ours_total = theirs_total = 0.0
                for _ in range(chunks):
                    started = time.perf_counter()
                    for _ in range(chunk):
                        answer = SmallCachedJob.delay_or_fail(x=x)
                    ours_total += time.perf_counter() - started
                    if answer.id != first.id:
                        raise RuntimeError(f"delay_or_fail answered {answer.id}, not the cached id")
                    started = time.perf_counter()
                    for _ in range(chunk):
                        answer = celery.AsyncResult(json.loads(raw.get(stored_key)))
                    theirs_total += time.perf_counter() - started
                    if answer.id != first.id:
                        raise RuntimeError("the raw get did not find the cached id")
                ours.append(ours_total / (chunks * chunk))
                theirs.append(theirs_total / (chunks * chunk))
    finally:
        before_task_publish.disconnect(on_publish)
        raw.close()
    messages = len(published)
    ratio = median(ours) / median(theirs)
    result.rows.append(
        Row(
            "P4",
            "delay_or_fail on a cached result (memcached), per call",
            fmt_seconds(median(ours)),
            f"pymemcache get + AsyncResult: {fmt_seconds(median(theirs))}",
            ratio,
            "<= 2x",
            ratio <= 2.0,
        )
    )
    result.rows.append(
        Row(
            "P4",
            f"broker messages during {repeats * calls:,} cached calls",
            str(messages),
            "—",
            None,
            "0",
            messages == 0,
        )
    )
    result.details += [
        f"delay_or_fail per call: {', '.join(fmt_seconds(v) for v in ours)}",
        f"raw get + AsyncResult per call: {', '.join(fmt_seconds(v) for v in theirs)}",
        f"{repeats} runs x {calls} calls each, same key, one process",
    ]
