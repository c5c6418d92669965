"""One run of one job: its context, its writes and its stops.

Runs here are eager (``apply``) in this process, on the suite's real Redis
result backend and memcached, so a test can look inside the run; the same
path on a prefork worker runs in test_task.py, test_cancel.py and
test_faults.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from flask import Flask

from flask_jobtastic import JobtasticTask, keys, side_records, states
from flask_jobtastic.binding import registered_instance
from flask_jobtastic.running import CHECK_CANCEL_AFTER, RunContext, rss
from flask_jobtastic.status import CANCEL_FIELD

#: What each run saw of its own context, by token.
seen: dict[str, RunContext | None] = {}
ran: list[str] = []
cleaned: list[tuple[str, dict[str, Any]]] = []
ticks: dict[str, int] = {}


class ContextProbeTask(JobtasticTask):
    """Records the run context it sees; waits for ``hold`` seconds in the middle."""

    significant_kwargs = ["token"]
    herd_avoidance_timeout = 10

    def calculate_result(self, token: str, hold: float = 0.0) -> str:
        seen[token] = self._run_slot.context
        time.sleep(hold)
        assert self._run_slot.context is seen[token]  # no other thread's run leaks in
        return token


class StoppableTask(JobtasticTask):
    """Reports progress until told to stop; says so when its clean-up runs."""

    significant_kwargs = ["token"]
    herd_avoidance_timeout = 10

    def calculate_result(self, token: str, steps: int = 50) -> str:
        ran.append(token)
        for i in range(steps):
            if i == 3:
                ask_cancel(self.backend, self.request.id)
            time.sleep(0.02)
            ticks[token] = i + 1
            self.update_progress(i + 1, steps)
        return token

    def on_cancel(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        cleaned.append((task_id, kwargs))


def ask_cancel(backend: Any, task_id: str) -> None:
    """What ``POST /cancel`` writes: the request in the job's side record."""
    side_records.write_side(backend, "job", task_id, {"owner": None, CANCEL_FIELD: time.time()})


def run_eager(app: Flask, task_cls: type[JobtasticTask], headers=None, **kwargs: Any):
    with app.app_context():
        task = registered_instance(task_cls)
        return task.apply(kwargs=kwargs, task_id=str(uuid.uuid4()), headers=headers or {})


def test_a_run_reads_its_keys_and_flags_from_the_message(app: Flask, token: str) -> None:
    run_eager(
        app,
        ContextProbeTask,
        headers={"jobtastic_key": f"sent-key-{token}", "jobtastic_herd": False},
        token=token,
    )
    context = seen[token]
    assert context is not None
    assert context.cache_key == f"sent-key-{token}"  # as sent, owner scope included
    assert context.herd_key == keys.herd_key(f"sent-key-{token}")
    assert context.herd_claimed is False  # sent with herd_avoidance=False
    assert context.kwargs == {"token": token}
    assert context.finished is True


def test_without_a_sent_key_the_run_computes_its_own(app: Flask, token: str) -> None:
    run_eager(app, ContextProbeTask, token=token)
    context = seen[token]
    with app.app_context():
        expected = registered_instance(ContextProbeTask).cache_key_for(kwargs={"token": token})
    assert context is not None and context.cache_key == expected


def test_runs_in_two_threads_of_one_instance_keep_their_own_context(app: Flask) -> None:
    tokens = [uuid.uuid4().hex, uuid.uuid4().hex]
    threads = [
        threading.Thread(
            target=run_eager, args=(app, ContextProbeTask), kwargs={"token": t, "hold": 0.3}
        )
        for t in tokens
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    first, second = (seen[t] for t in tokens)
    assert first is not None and second is not None and first is not second
    assert first.kwargs == {"token": tokens[0], "hold": 0.3}
    assert second.kwargs == {"token": tokens[1], "hold": 0.3}


def test_reporting_outside_a_run_writes_nothing_and_never_fails(app: Flask) -> None:
    with app.app_context():
        task = registered_instance(StoppableTask)
        task.update_progress(1, 2)  # a unit test calling calculate_result directly
        with task.step("Outside"):
            task.notify("still fine")
        task.add_one_success("item")
        context = task._run_slot.context
    assert context is not None and context.task_id is None
    assert context.recorder is not None
    assert context.recorder.snapshot()["steps"][0]["name"] == "Outside"


def test_a_cancel_asked_during_the_run_stops_it_at_its_next_write(app: Flask, token: str) -> None:
    result = run_eager(app, StoppableTask, token=token)
    backend = app.extensions["jobtastic"].celery.backend
    assert backend.get_task_meta(result.id)["status"] == states.REVOKED
    assert cleaned == [(result.id, {"token": token})]  # the clean-up ran once
    assert 4 <= ticks[token] < 50  # it stopped at the write after the cancel


class SteppedStoppableTask(StoppableTask):
    """Declares steps, so it shows PROGRESS at once: that first write is its check."""

    steps = ["Only"]


@pytest.mark.parametrize("task_cls", [StoppableTask, SteppedStoppableTask])
def test_a_message_that_waited_is_checked_for_a_cancel_before_it_runs(
    app: Flask, token: str, task_cls: type[StoppableTask]
) -> None:
    task_id = str(uuid.uuid4())
    with app.app_context():
        task = registered_instance(task_cls)
        ask_cancel(task.backend, task_id)
        sent_at = time.time() - CHECK_CANCEL_AFTER - 1
        task.apply(kwargs={"token": token}, task_id=task_id, headers={"jobtastic_sent_at": sent_at})
        meta = task.backend.get_task_meta(task_id)
    assert token not in ran  # calculate_result never started
    assert meta["status"] == states.REVOKED


def test_rss_is_this_process_resident_memory() -> None:
    first = rss()
    buffer = bytearray(50_000_000)
    buffer[::4096] = b"x" * len(buffer[::4096])  # touch every page
    assert rss() - first > 40_000_000
    del buffer


@pytest.fixture(autouse=True)
def _forget_runs() -> None:
    seen.clear()
    ran.clear()
    cleaned.clear()
    ticks.clear()
