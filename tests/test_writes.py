"""A running job's progress writes and the stop each one may bring.

Runs are eager (``apply``) in this process on the suite's real Redis result
backend, so a test can change the job's stored state between two of its
writes, as another process would: the same path on a prefork worker with a
second worker on the broker runs in test_lifecycle.py.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from celery.exceptions import TaskRevokedError
from flask import Flask

from flask_jobtastic import JobtasticTask, states
from flask_jobtastic.binding import registered_instance

#: What each run did, by token: the writes it got through, its clean-ups.
ticks: dict[str, int] = {}
cleaned: list[str] = []


def revoke_in_backend(backend: Any, task_id: str) -> None:
    """What a Celery worker that does not hold the job does with a revoke broadcast."""
    backend.mark_as_revoked(task_id, reason="revoked", store_result=True)


def declare_lost(backend: Any, task_id: str) -> None:
    """What a reader stores for a job whose worker stopped beating."""
    backend.store_result(task_id, TaskRevokedError("lost"), states.FAILURE)


class ChangedUnderItTask(JobtasticTask):
    """Reports 20 items; before its fourth, its stored state is changed by ``change``."""

    significant_kwargs = ["token"]
    herd_avoidance_timeout = 10

    def calculate_result(self, token: str, change: str) -> str:
        for i in range(20):
            if i == 3:
                {"revoked": revoke_in_backend, "lost": declare_lost}[change](
                    self.backend, self.request.id
                )
            time.sleep(0.11)  # past the suite's progress interval: every report writes
            self.update_progress(i + 1, 20)
            ticks[token] = i + 1
        return token

    def on_cancel(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        cleaned.append(kwargs["token"])


def run_eager(app: Flask, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    task_id = str(uuid.uuid4())
    with app.app_context():
        task = registered_instance(ChangedUnderItTask)
        task.apply(kwargs=kwargs, task_id=task_id)
        return task_id, task.backend.get_task_meta(task_id)


def test_a_job_found_revoked_at_its_write_cleans_up_and_stops(app: Flask, token: str) -> None:
    _, meta = run_eager(app, token=token, change="revoked")
    assert meta["status"] == states.REVOKED
    assert cleaned.count(token) == 1  # on_cancel ran, once
    assert ticks[token] == 3  # its next write was where it stopped


def test_a_job_found_lost_at_its_write_stops_and_keeps_that_verdict(app: Flask, token: str) -> None:
    _, meta = run_eager(app, token=token, change="lost")
    assert meta["status"] == states.FAILURE  # never written over by PROGRESS or SUCCESS
    assert token not in cleaned  # not a cancel: no clean-up of one
    assert ticks[token] == 3


@pytest.fixture(autouse=True)
def _forget_runs() -> None:
    ticks.clear()
    cleaned.clear()
