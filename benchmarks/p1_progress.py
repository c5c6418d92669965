"""P1: the cost of ``update_progress`` on every item, and how often it writes.

Each loop runs inside a real task executed in this process (``apply`` with a
``task_id``), so progress really goes to the Redis result backend. Writes are
counted on the pub/sub channel Celery's Redis backend publishes every
task-meta write on.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from flask_jobtastic import states

from .env import BenchEnv
from .report import BenchResult, Row
from .stats import fmt_seconds, median
from .tasks import ProgressLoopJob


class WriteCounter:
    """Counts PROGRESS writes of one task id, as published by the Redis backend."""

    def __init__(self, env: BenchEnv, task_id: str) -> None:
        self.backend = env.app.extensions["jobtastic"].celery.backend
        self.client = env.redis()
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(self.backend.get_key_for_task(task_id))
        self.progress_writes = 0
        self.other_writes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def _listen(self) -> None:
        while not self._stop.is_set():
            message = self.pubsub.get_message(timeout=0.05)
            if message and message.get("type") == "message":
                meta = self.backend.decode_result(message["data"])
                if meta.get("status") == states.PROGRESS:
                    self.progress_writes += 1
                else:
                    self.other_writes += 1

    def __enter__(self) -> WriteCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)  # let the last publishes arrive
        self._stop.set()
        self._thread.join(5)
        self.pubsub.close()
        self.client.close()


def _apply(task: Any, kwargs: dict[str, Any]) -> tuple[Any, str]:
    task_id = str(uuid.uuid4())
    result = task.apply(kwargs=kwargs, task_id=task_id)
    return result.get(), task_id


def run(env: BenchEnv, quick: bool, result: BenchResult) -> None:
    app = env.app
    state = app.extensions["jobtastic"]
    interval = state.progress_interval
    n = 100_000 if quick else 1_000_000
    n_state = 1_000 if quick else 10_000
    repeats = 3 if quick else 5
    loop = env.plain["loop"]

    bare: list[float] = []
    with_tqdm: list[float] = []
    ours: list[float] = []
    ours_wall: list[float] = []
    writes: list[int] = []
    with app.app_context():
        _apply(ProgressLoopJob, {"n": 1000})  # warm up imports and connections
        for _ in range(repeats):
            bare.append(_apply(loop, {"mode": "bare", "n": n})[0] / n)
            with_tqdm.append(_apply(loop, {"mode": "tqdm", "n": n})[0] / n)
            task_id = str(uuid.uuid4())
            with WriteCounter(env, task_id) as counter:
                started = time.perf_counter()
                elapsed = ProgressLoopJob.apply(kwargs={"n": n}, task_id=task_id).get()
                wall = time.perf_counter() - started
            ours.append(elapsed / n)
            ours_wall.append(wall)
            writes.append(counter.progress_writes)
        update_state = [
            _apply(loop, {"mode": "update_state", "n": n_state})[0] / n_state
            for _ in range(max(2, repeats - 2))
        ]

        # The throttle under a loop that lasts several intervals.
        items, pause = (40, 0.01) if quick else (300, 0.01)
        task_id = str(uuid.uuid4())
        with WriteCounter(env, task_id) as counter:
            started = time.perf_counter()
            ProgressLoopJob.apply(kwargs={"n": items, "pause": pause}, task_id=task_id).get()
            slow_wall = time.perf_counter() - started
        slow_writes = counter.progress_writes

    bare_m, tqdm_m, ours_m = median(bare), median(with_tqdm), median(ours)
    ours_net = max(ours_m - bare_m, 0.0)
    tqdm_net = max(tqdm_m - bare_m, 1e-12)
    ratio = ours_net / tqdm_net
    state_m = median(update_state)
    result.rows.append(
        Row(
            "P1",
            f"cost per update_progress call, loop of {n:,} items (net of the bare loop)",
            fmt_seconds(ours_net),
            f"tqdm.update(): {fmt_seconds(tqdm_net)}",
            ratio,
            "<= 3x tqdm",
            ratio <= 3.0,
            note=(
                f"per item including the loop: update_progress {fmt_seconds(ours_m)}, "
                f"tqdm {fmt_seconds(tqdm_m)}, bare loop {fmt_seconds(bare_m)}"
            ),
        )
    )
    result.rows.append(
        Row(
            "P1",
            f"update_state(PROGRESS) on every item (Flask docs), {n_state:,} items, per call",
            fmt_seconds(ours_m),
            f"update_state: {fmt_seconds(state_m)}",
            ours_m / state_m,
            "—",
            None,
        )
    )
    worst = max(range(repeats), key=lambda i: writes[i] - (ours_wall[i] / interval + 2))
    limit = ours_wall[worst] / interval + 2
    result.rows.append(
        Row(
            "P1",
            f"backend writes, {n:,}-item loop (interval {interval:g} s)",
            f"{writes[worst]} writes in {ours_wall[worst]:.2f} s",
            f"limit {limit:.1f}",
            None,
            "<= duration/interval + 2",
            all(writes[i] <= ours_wall[i] / interval + 2 for i in range(repeats)),
        )
    )
    slow_limit = slow_wall / interval + 2
    result.rows.append(
        Row(
            "P1",
            f"backend writes, {items} items x {pause * 1000:g} ms",
            f"{slow_writes} writes in {slow_wall:.2f} s",
            f"limit {slow_limit:.1f}",
            None,
            "<= duration/interval + 2",
            slow_writes <= slow_limit,
        )
    )
    result.details += [
        f"bare loop per item: {', '.join(fmt_seconds(v) for v in bare)}",
        f"tqdm.update per item: {', '.join(fmt_seconds(v) for v in with_tqdm)}",
        f"update_progress per item: {', '.join(fmt_seconds(v) for v in ours)}",
        f"update_progress task wall time: {', '.join(f'{v:.3f} s' for v in ours_wall)}",
        f"PROGRESS writes per 1M-loop run: {writes}",
        f"update_state per call ({n_state:,} items): "
        f"{', '.join(fmt_seconds(v) for v in update_state)}",
        f"throttle loop: {slow_writes} PROGRESS writes in {slow_wall:.3f} s",
    ]
