"""P3: batch status of 100 ids in one request vs the status of 1 id.

Sequential requests over one keep-alive connection to the same gunicorn,
interleaved so both see the same conditions; the ids are 100 real finished
jobs.
"""

from __future__ import annotations

import json
import random
import time

from .clients import KeepAliveClient
from .env import BenchEnv
from .report import BenchResult, Row
from .stats import fmt_seconds, median, percentile
from .tasks import SmallJob

BATCH = 100


def _finished_jobs(env: BenchEnv, count: int) -> list[str]:
    offset = random.randrange(10**9)
    with env.app.app_context():
        jobs = [SmallJob.delay_or_fail(x=offset + i) for i in range(count)]
    deadline = time.monotonic() + 60
    for job in jobs:
        job.get(timeout=max(deadline - time.monotonic(), 1))
    return [job.id for job in jobs]


def run(env: BenchEnv, quick: bool, result: BenchResult) -> None:
    env.worker()
    base = env.web()
    repeats, per_repeat = (2, 20) if quick else (5, 100)
    ids = _finished_jobs(env, BATCH)
    single_path = f"/jobtastic/status/{ids[0]}"
    get_path = "/jobtastic/status?ids=" + ",".join(ids)
    body = json.dumps({"task_ids": ids}).encode()
    post_headers = {"Content-Type": "application/json"}
    client = KeepAliveClient(base)

    def check(status: int, data: bytes, batch: bool) -> None:
        if status != 200:
            raise RuntimeError(f"status request answered {status}: {data[:300]!r}")
        document = json.loads(data)
        if batch:
            tasks = document["tasks"]
            if len(tasks) != BATCH or any(d["state"] != "SUCCESS" for d in tasks.values()):
                raise RuntimeError("the batch answer does not list 100 finished jobs")
        elif document["state"] != "SUCCESS":
            raise RuntimeError(f"unexpected single status {document}")

    try:
        for _ in range(5):  # warm up
            check(*client.timed("GET", single_path)[1:], batch=False)
            check(*client.timed("POST", "/jobtastic/status", body, post_headers)[1:], batch=True)
            check(*client.timed("GET", get_path)[1:], batch=True)
        single_med: list[float] = []
        post_med: list[float] = []
        get_med: list[float] = []
        all_single: list[float] = []
        all_post: list[float] = []
        for _ in range(repeats):
            single: list[float] = []
            post: list[float] = []
            get: list[float] = []
            for _ in range(per_repeat):
                latency, status, data = client.timed("GET", single_path)
                check(status, data, batch=False)
                single.append(latency)
                latency, status, data = client.timed(
                    "POST", "/jobtastic/status", body, post_headers
                )
                check(status, data, batch=True)
                post.append(latency)
                latency, status, data = client.timed("GET", get_path)
                check(status, data, batch=True)
                get.append(latency)
            single_med.append(median(single))
            post_med.append(median(post))
            get_med.append(median(get))
            all_single += single
            all_post += post
    finally:
        client.close()
    env.check_processes()
    one = median(single_med)
    for label, samples in (("POST {task_ids}", post_med), ("GET ?ids=", get_med)):
        ratio = median(samples) / one
        result.rows.append(
            Row(
                "P3",
                f"batch status of {BATCH} ids, {label} (latency)",
                fmt_seconds(median(samples)),
                f"1 id: {fmt_seconds(one)}",
                ratio,
                "<= 3x",
                ratio <= 3.0,
            )
        )
    result.details += [
        f"1 id, median per run: {', '.join(fmt_seconds(v) for v in single_med)}; "
        f"p99 {fmt_seconds(percentile(all_single, 99))}",
        f"100 ids POST, median per run: {', '.join(fmt_seconds(v) for v in post_med)}; "
        f"p99 {fmt_seconds(percentile(all_post, 99))}",
        f"100 ids GET, median per run: {', '.join(fmt_seconds(v) for v in get_med)}",
        f"{repeats} runs x {per_repeat} requests of each kind, interleaved, one keep-alive "
        "connection",
    ]
