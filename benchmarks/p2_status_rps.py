"""P2: status endpoint throughput for one PROGRESS job, ours vs a hand-written view.

Both views are served by the same gunicorn (``env.GUNICORN_ARGS``) from the
same app and read the same job, which a real worker keeps in PROGRESS; the
load comes from another process (wrk).
"""

from __future__ import annotations

import time
import uuid

from .clients import KeepAliveClient, load_test
from .env import GUNICORN_ARGS, BenchEnv
from .report import BenchResult, Row
from .stats import median
from .tasks import HoldJob, stop_key


def _wait_for_progress(client: KeepAliveClient, task_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, document = client.get_json(f"/jobtastic/status/{task_id}")
        if status == 200 and document.get("state") == "PROGRESS":
            return
        time.sleep(0.1)
    raise RuntimeError(f"job {task_id} never reached PROGRESS (last: {status} {document})")


def run(env: BenchEnv, quick: bool, result: BenchResult) -> None:
    env.worker()
    base = env.web()
    repeats, seconds = (2, 1.0) if quick else (7, 3.0)
    token = uuid.uuid4().hex
    with env.app.app_context():
        job = HoldJob.delay_or_fail(token=token, seconds=60.0 if quick else 300.0)
    client = KeepAliveClient(base)
    ours_path = f"/jobtastic/status/{job.id}"
    raw_path = f"/raw/status/{job.id}"
    try:
        _wait_for_progress(client, job.id)
        status, raw_doc = client.get_json(raw_path)
        if status != 200 or raw_doc.get("state") != "PROGRESS":
            raise RuntimeError(f"hand-written view answered {status}: {raw_doc}")
        load_test(base + ours_path, 1)  # warm both views and the server's workers
        load_test(base + raw_path, 1)
        ours: list[float] = []
        raw: list[float] = []
        tool = ""
        for index in range(repeats):
            order = [(ours_path, ours), (raw_path, raw)]
            if index % 2:
                order.reverse()
            for path, samples in order:
                load = load_test(base + path, seconds)
                if load.errors:
                    raise RuntimeError(f"{load.errors} failed requests to {path} under load")
                samples.append(load.requests_per_second)
                tool = load.tool
        env.check_processes()
        _, document = client.get_json(ours_path)
        if document.get("state") != "PROGRESS":
            raise RuntimeError(f"the job left PROGRESS during the measurement: {document}")
    finally:
        env.redis().set(stop_key(token), 1, ex=600)
        client.close()
    job.get(timeout=30)
    ratio = median(ours) / median(raw)
    result.rows.append(
        Row(
            "P2",
            "status endpoint, one PROGRESS job, Redis backend (req/s)",
            f"{median(ours):,.0f} req/s",
            f"AsyncResult view: {median(raw):,.0f} req/s",
            ratio,
            ">= 0.9x",
            ratio >= 0.9,
            note=(
                f"gunicorn {' '.join(GUNICORN_ARGS)}, load from {tool} with 8 connections, "
                f"{seconds:g} s per run, {repeats} runs each, alternating"
            ),
        )
    )
    result.details += [
        f"ours req/s: {', '.join(f'{v:,.0f}' for v in ours)}",
        f"hand-written req/s: {', '.join(f'{v:,.0f}' for v in raw)}",
    ]
