"""P7: time from a progress write in the worker to the page seeing it.

The worker writes progress at irregular, known wall-clock times (recorded in
Redis by the job). Against the same job and at the same time, an SSE reader
on ``/jobtastic/events/<id>`` and a poller doing what the widget does by
default (``GET /jobtastic/status/<id>``, then wait 1000 ms) note when each
write becomes visible: the first document whose ``completed`` reaches it.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid

from .clients import KeepAliveClient, sse_events
from .env import BenchEnv
from .report import BenchResult, Row
from .stats import fmt_seconds, median, percentile
from .tasks import MarkedProgressJob, marks_key

#: The widget's default ``pollInterval`` (static/jobtastic.js).
POLL_INTERVAL = 1.0

Seen = list[tuple[float, float]]  # (wall-clock time, completed)


def _observe(document: dict, seen: Seen) -> None:
    completed = document.get("completed")
    if document.get("state") == "PROGRESS" and isinstance(completed, int | float):
        seen.append((time.time(), float(completed)))


def _read_events(base: str, task_id: str, seen: Seen, errors: list[BaseException]) -> None:
    try:
        for event, data in sse_events(base, f"/jobtastic/events/{task_id}", timeout=60):
            if event != "status":
                raise RuntimeError(f"unexpected event {event}: {data[:300]}")
            document = json.loads(data)
            _observe(document, seen)
            if document.get("ready"):
                return
        raise RuntimeError("the event stream ended before the job did")
    except BaseException as exc:
        errors.append(exc)


def _poll(base: str, task_id: str, seen: Seen, errors: list[BaseException]) -> None:
    client = KeepAliveClient(base)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            status, document = client.get_json(f"/jobtastic/status/{task_id}")
            if status != 200:
                raise RuntimeError(f"status answered {status}: {document}")
            _observe(document, seen)
            if document.get("ready"):
                return
            time.sleep(POLL_INTERVAL)
        raise RuntimeError("the poller gave up waiting for the job")
    except BaseException as exc:
        errors.append(exc)
    finally:
        client.close()


def _latencies(marks: dict[int, float], seen: Seen) -> list[float]:
    """For each write, how long until a document at least that far along was seen."""
    out = []
    for completed, written_at in sorted(marks.items()):
        times = [at for at, value in seen if value >= completed]
        if not times:
            raise RuntimeError(f"write {completed} was never seen")
        out.append(min(times) - written_at)
    return out


def run(env: BenchEnv, quick: bool, result: BenchResult) -> None:
    env.worker()
    base = env.web()
    runs, writes = (1, 4) if quick else (2, 12)
    rng = random.Random(7)
    client = env.redis()
    events: list[float] = []
    polling: list[float] = []
    try:
        for _ in range(runs):
            token = uuid.uuid4().hex
            gaps = [1.5] + [rng.uniform(0.6, 1.4) for _ in range(writes - 1)]
            with env.app.app_context():
                job = MarkedProgressJob.delay_or_fail(token=token, gaps=gaps)
            seen_events: Seen = []
            seen_polls: Seen = []
            errors: list[BaseException] = []
            threads = [
                threading.Thread(target=_read_events, args=(base, job.id, seen_events, errors)),
                threading.Thread(target=_poll, args=(base, job.id, seen_polls, errors)),
            ]
            for thread in threads:
                thread.start()
            job.get(timeout=120)
            for thread in threads:
                thread.join(30)
            if errors:
                raise errors[0]
            raw_marks = client.hgetall(marks_key(token))
            marks = {int(k): float(v) for k, v in raw_marks.items()}
            if len(marks) != writes:
                raise RuntimeError(f"the job recorded {len(marks)} of {writes} writes")
            events += _latencies(marks, seen_events)
            polling += _latencies(marks, seen_polls)
    finally:
        client.close()
    env.check_processes()
    ours = median(events)
    ratio = ours / median(polling)
    result.rows.append(
        Row(
            "P7",
            "progress write in the worker -> page sees it, event stream (SSE)",
            fmt_seconds(ours),
            f"polling every {POLL_INTERVAL * 1000:.0f} ms: {fmt_seconds(median(polling))}",
            ratio,
            "SSE <= 100 ms median",
            ours <= 0.100,
            note=(
                f"{len(events)} writes over {runs} job(s); SSE p99 "
                f"{fmt_seconds(percentile(events, 99))}, polling p99 "
                f"{fmt_seconds(percentile(polling, 99))}"
            ),
        )
    )
    result.details += [
        f"SSE latencies: {', '.join(fmt_seconds(v) for v in events)}",
        f"polling latencies: {', '.join(fmt_seconds(v) for v in polling)}",
    ]
