"""P9: the status of a group of 1,000 children vs one job's, and what users write instead.

One group of 1,000 parts is started with ``canvas_or_fail``: 999 tiny parts
(``SmallJob``) and, last, one ``HoldJob`` that keeps the group in PROGRESS
until told to stop. Its status is read while in PROGRESS (999 parts
succeeded, one running) and again once the whole group has succeeded.

Every read is a request through the Flask test client of the benchmark app
in this process (no HTTP, no gunicorn), on the benchmark's Redis result backend:

- ours: ``GET /jobtastic/status/<group id>``, whose document carries ``children``;
- one job: ``GET /jobtastic/status/<id>`` of a ``HoldJob`` in the same state;
- ``GroupResult.restore(id).completed_count()`` over the same 1,000 children
  (a ``GroupResult`` built from their ids, saved once), in a hand-written view;
- ``AsyncResult(id).state`` of each of the 1,000 children, in a hand-written
  view (the ids kept in memory, which costs that view nothing).

The group's run time is also set against a Celery ``group`` of as many plain
``@celery.task`` calls (info only).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from celery import group
from celery.result import AsyncResult, GroupResult
from flask import Flask, jsonify

from flask_jobtastic import canvas_or_fail
from flask_jobtastic.canvas import part_ids

from .env import WORKER_ARGS, BenchEnv
from .report import BenchResult, Row
from .stats import fmt_seconds, median
from .tasks import HoldJob, SmallJob, stop_key

Document = dict[str, Any]
Check = Callable[[Document], bool]

#: The ids of each group's children, as a user's own code would keep them.
_CHILD_IDS: dict[str, list[str]] = {}

#: The reads of each phase, in the order the details list them.
KINDS = {
    "ours": "ours",
    "one": "one job",
    "group": "completed_count",
    "children": "per-child loop",
}


def _add_views(app: Flask) -> None:
    """The two hand-written status views users write today, once per app."""
    if "p9_group_status" in app.view_functions:
        return
    celery = app.extensions["jobtastic"].celery

    @app.get("/p9/group/<group_id>")
    def p9_group_status(group_id: str) -> Any:
        """Celery's way: restore the saved GroupResult, count its successful children."""
        saved = GroupResult.restore(group_id, app=celery)
        return jsonify(
            {"id": group_id, "completed": saved.completed_count(), "total": len(saved.results)}
        )

    @app.get("/p9/children/<group_id>")
    def p9_children_status(group_id: str) -> Any:
        """A loop over the children: each one's state, counted."""
        states = Counter(AsyncResult(child, app=celery).state for child in _CHILD_IDS[group_id])
        return jsonify({"id": group_id, "states": dict(states), "total": sum(states.values())})


class Reader:
    """GETs through one test client; timed ones are checked outside the timing."""

    def __init__(self, app: Flask) -> None:
        self.client = app.test_client()

    def timed(self, path: str, check: Check) -> float:
        started = time.perf_counter()
        response = self.client.get(path)
        data = response.get_data()
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"GET {path} answered {response.status_code}: {data[:300]!r}")
        document = json.loads(data)
        if not check(document):
            raise RuntimeError(f"GET {path} answered an unexpected document: {str(document)[:500]}")
        return elapsed

    def document(self, path: str) -> Document:
        document: Document = self.client.get(path).get_json()
        return document

    def wait(self, path: str, ok: Check, what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        document: Document = {}
        while time.monotonic() < deadline:
            document = self.document(path)
            if ok(document):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{what}: not within {timeout:g} s (last: {str(document)[:500]})")


def _children(document: Document) -> dict[str, int]:
    children: dict[str, int] = document.get("children") or {}
    return children


def _held(size: int) -> Check:
    """The group in PROGRESS with every tiny part done and the held one running."""

    def check(document: Document) -> bool:
        children = _children(document)
        return (
            document.get("state") == "PROGRESS"
            and children.get("total") == size
            and children.get("succeeded") == size - 1
            and children.get("running") == 1
        )

    return check


def _finished(size: int) -> Check:
    def check(document: Document) -> bool:
        return (
            document.get("state") == "SUCCESS"
            and _children(document).get("succeeded") == size
            and len(document.get("result") or []) == size
        )

    return check


def _in_state(state: str) -> Check:
    return lambda document: document.get("state") == state


def _commands(redis: Any) -> int:
    """Commands the result-backend Redis has run, ``INFO`` itself left out."""
    stats = redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


class Phase:
    """The four reads of one phase (PROGRESS or finished) and their medians per run."""

    def __init__(self, name: str, paths: dict[str, str], checks: dict[str, Check]) -> None:
        self.name = name
        self.paths = paths
        self.checks = checks
        self.medians: dict[str, list[float]] = {kind: [] for kind in KINDS}

    def measure(self, reader: Reader, repeats: int, pairs: int, loops: int) -> None:
        """Per run: ``pairs`` x (one job, ours), then ``loops`` x (the two alternatives),
        interleaved, the order flipped every other run."""
        for index in range(repeats):
            samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
            cheap, dear = ["one", "ours"], ["group", "children"]
            if index % 2:
                cheap.reverse()
                dear.reverse()
            for kinds, count in ((cheap, pairs), (dear, loops)):
                for _ in range(count):
                    for kind in kinds:
                        samples[kind].append(reader.timed(self.paths[kind], self.checks[kind]))
            for kind, values in samples.items():
                self.medians[kind].append(median(values))

    def median(self, kind: str) -> float:
        return median(self.medians[kind])

    def details(self) -> list[str]:
        return [
            f"{self.name}, {label}, median per run: "
            + ", ".join(fmt_seconds(v) for v in self.medians[kind])
            for kind, label in KINDS.items()
        ]


def _rows(result: BenchResult, phase: Phase, size: int, label: str, one_label: str) -> None:
    ours, one = phase.median("ours"), phase.median("one")
    result.rows.append(
        Row(
            "P9",
            f"status of a group of {size:,} children, {label} (latency)",
            fmt_seconds(ours),
            f"{one_label}: {fmt_seconds(one)}",
            ours / one,
            "<= 3x",
            ours / one <= 3.0,
        )
    )
    for kind, alternative in (
        ("group", "GroupResult.restore().completed_count()"),
        ("children", f"AsyncResult(id).state x {size:,}"),
    ):
        theirs = phase.median(kind)
        result.rows.append(
            Row(
                "P9",
                f"the same status read, {label}, vs a view of {alternative} (latency)",
                fmt_seconds(ours),
                f"{alternative}: {fmt_seconds(theirs)}",
                ours / theirs,
            )
        )


def _plain_group_seconds(env: BenchEnv, size: int) -> float:
    """A Celery group of ``size`` plain ``@celery.task`` calls, sent and joined."""
    double = env.plain["double"]
    started = time.perf_counter()
    answer = group(double.s(i) for i in range(size)).apply_async()
    values = answer.join(timeout=300)
    elapsed = time.perf_counter() - started
    if values != [i * 2 for i in range(size)]:
        raise RuntimeError("the plain group did not return every result")
    answer.forget()
    return elapsed


def _start(app: Flask, size: int, token: str, hold_seconds: float) -> tuple[str, list[str]]:
    """The group of ``size - 1`` tiny parts and one held part; its id, its children's ids."""
    offset = random.randrange(10**9)
    parts = [SmallJob.s(x=offset + i) for i in range(size - 1)]
    parts.append(HoldJob.s(token=token, seconds=hold_seconds))
    with app.test_request_context():
        canvas = canvas_or_fail(group(parts))
        ids = part_ids(app.extensions["jobtastic"], canvas.id)
    if ids is None or len(ids) != size:
        raise RuntimeError(f"group {canvas.id} has not {size} parts: {ids}")
    return canvas.id, ids


def run(env: BenchEnv, quick: bool, result: BenchResult) -> None:
    env.worker()
    # quick: a group of 200; a group's parts cost more the more parts it has
    size, repeats, pairs, loops = (200, 2, 20, 2) if quick else (1000, 5, 100, 10)
    hold_seconds = 120.0 if quick else 900.0
    app = env.app
    _add_views(app)
    celery = app.extensions["jobtastic"].celery
    reader = Reader(app)
    redis = env.redis()
    token = uuid.uuid4().hex
    plain_seconds = _plain_group_seconds(env, size)
    try:
        started = time.perf_counter()
        canvas_id, ids = _start(app, size, token, hold_seconds)
        _CHILD_IDS[canvas_id] = ids
        saved_id = str(uuid.uuid4())
        GroupResult(saved_id, [AsyncResult(i, app=celery) for i in ids], app=celery).save(
            backend=celery.backend
        )
        ours_path = f"/jobtastic/status/{canvas_id}"
        reader.wait(ours_path, _held(size), f"{size - 1} tiny parts done, the held one running")
        tiny_seconds = time.perf_counter() - started
        with app.app_context():
            one_job = HoldJob.delay_or_fail(token=token, seconds=hold_seconds)
        one_path = f"/jobtastic/status/{one_job.id}"
        reader.wait(one_path, _in_state("PROGRESS"), "one job in PROGRESS")
        paths = {
            "ours": ours_path,
            "one": one_path,
            "group": f"/p9/group/{saved_id}",
            "children": f"/p9/children/{canvas_id}",
        }
        for path in paths.values():  # warm every view up
            reader.document(path)
        held = Phase(
            "PROGRESS",
            paths,
            {
                "ours": _held(size),
                "one": _in_state("PROGRESS"),
                "group": lambda d: d["completed"] == size - 1 and d["total"] == size,
                "children": lambda d: d["states"] == {"SUCCESS": size - 1, "PROGRESS": 1},
            },
        )
        held.measure(reader, repeats, pairs, loops)
        redis.set(stop_key(token), 1, ex=600)
        reader.wait(ours_path, _finished(size), "the whole group succeeded")
        reader.wait(one_path, _in_state("SUCCESS"), "the one job succeeded")
        done = Phase(
            "finished",
            paths,
            {
                "ours": _finished(size),
                "one": _in_state("SUCCESS"),
                "group": lambda d: d["completed"] == size,
                "children": lambda d: d["states"] == {"SUCCESS": size},
            },
        )
        done.measure(reader, repeats, pairs, loops)
        commands: dict[str, float] = {}
        sizes: dict[str, int] = {}
        for kind, count in (("ours", 20), ("one", 20), ("group", 3), ("children", 3)):
            before = _commands(redis)
            for _ in range(count):
                sizes[kind] = len(reader.client.get(paths[kind]).get_data())
            commands[kind] = (_commands(redis) - before) / count
    finally:
        redis.set(stop_key(token), 1, ex=600)
        _CHILD_IDS.clear()
    env.check_processes()
    _rows(result, held, size, f"in PROGRESS ({size - 1:,} done, 1 running)", "one job in PROGRESS")
    _rows(result, done, size, f"finished (SUCCESS, {size:,} results)", "one finished job")
    result.rows.append(
        Row(
            "P9",
            f"result-backend commands per status read, finished group of {size:,}",
            f"{commands['ours']:g} (one job: {commands['one']:g})",
            f"completed_count: {commands['group']:g}; per-child loop: {commands['children']:g}",
            note=(
                "reads in this process through the Flask test client (no HTTP), all on the "
                f"benchmark app and its Redis result backend; {repeats} runs of {pairs} reads "
                f"each of ours and one job, then {loops} of each alternative, interleaved; the "
                f"group: {size - 1:,} SmallJob parts and one HoldJob part; worker "
                f"{' '.join(WORKER_ARGS)}"
            ),
        )
    )
    ratio = tiny_seconds / plain_seconds
    result.rows.append(
        Row(
            "P9",
            f"the group's run: canvas_or_fail to {size - 1:,} tiny parts done",
            f"{tiny_seconds:.2f} s",
            f"celery group of {size:,} plain @celery.task, sent and joined: {plain_seconds:.2f} s",
            ratio,
        )
    )
    result.details += held.details() + done.details()
    result.details += [
        "result-backend commands per read (INFO commandstats, INFO left out): "
        + ", ".join(f"{KINDS[kind]} {value:g}" for kind, value in commands.items()),
        "response bytes, finished: "
        + ", ".join(f"{KINDS[kind]} {value:,}" for kind, value in sizes.items()),
    ]
