"""Steps, messages, counts and the registry end to end (real worker, Redis, memcached)."""

from __future__ import annotations

import time

import pytest

from flask_jobtastic.signals import task_changed
from tests.app_factory import close_app, create_app
from tests.tasks import CountedTask, CountingTask, StepsTask, TrackedTask

pytestmark = pytest.mark.usefixtures("celery_worker")

ALICE = {"X-User": "alice"}
BOB = {"X-User": "bob"}
POST = {"X-Requested-With": "test"}


def wait_ready(client, task_id, headers=None, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        document = client.get(f"/jobtastic/status/{task_id}", headers=headers).get_json()
        if document["ready"]:
            return document
        time.sleep(0.05)
    raise AssertionError(f"{task_id} not ready: {document}")


def test_declared_steps_pending_at_first_poll_and_finished_at_the_end(app, client, token):
    with app.app_context():
        result = StepsTask.delay_or_fail(token=token)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        first = client.get(f"/jobtastic/status/{result.id}").get_json()
        if first["state"] == "PROGRESS":
            break
        time.sleep(0.02)
    assert [s["key"] for s in first["steps"]] == ["fetch", "check", "write"]
    assert all(s["state"] == "pending" for s in first["steps"])
    assert first["steps_summary"] == "0 of 3 steps finished"

    done = wait_ready(client, result.id)
    assert done["state"] == "SUCCESS" and done["result"] == token
    by_name = {s["name"]: s for s in done["steps"]}
    assert by_name["Fetch the data"]["state"] == "done"
    assert by_name["Write it"]["state"] == "done"
    assert by_name["Write it"]["detail"] == "writing row 1"
    flaky = by_name["Call the flaky service"]
    assert flaky["state"] == "failed" and flaky["depth"] == 1
    assert flaky["error"]["type"] == "ConnectionError"  # its message is generic (test_steps.py)
    assert flaky["error"]["error_id"] in flaky["error"]["message"]
    assert by_name["Check it"]["state"] == "done"  # the job went on
    assert all(s["duration"] is not None for s in done["steps"])
    assert [m["message"] for m in done["messages"]] == [
        "fetched 3 rows",
        "checked, one call failed",
    ]
    assert done["steps_summary"].startswith("4 of 4 steps finished")


def test_counts_match_items_and_drive_progress(app, client, token):
    with app.app_context():
        result = CountingTask.delay_or_fail(token=token, items=20, bad=[3, 7])
    seen_progress = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        document = client.get(f"/jobtastic/status/{result.id}").get_json()
        if document["state"] == "PROGRESS" and "counts" in document:
            counts = document["counts"]
            done = counts["success"] + counts["failure"]
            assert counts["pending"] == 20 - done
            seen_progress.append((done, document["progress_percent"]))
        if document["ready"]:
            break
        time.sleep(0.05)
    assert document["state"] == "SUCCESS"
    counts = document["counts"]
    assert (counts["amount"], counts["success"], counts["failure"], counts["pending"]) == (
        20,
        18,
        2,
        0,
    )
    assert counts["failed"] == ["item-3", "item-7"]
    assert len(counts["succeeded"]) == 18
    assert any(0 < percent < 100 for _, percent in seen_progress)
    for done, percent in seen_progress:
        assert percent == pytest.approx(100 * done / 20, abs=0.1)


@pytest.fixture
def owned_app():
    app = create_app(owner_header="X-User")
    yield app
    close_app(app)


def test_registry_lists_only_the_callers_jobs_and_signals_each_change(owned_app, token):
    changes = []

    def receiver(sender, record, previous_state):
        if record.owner == "alice" and record.task_name.endswith("TrackedTask"):
            changes.append((previous_state, record.state))

    client = owned_app.test_client()
    with task_changed.connected_to(receiver):
        with owned_app.test_request_context(headers=ALICE):
            result = TrackedTask.delay_or_fail(token=token)
        with owned_app.test_request_context(headers=BOB):
            theirs = TrackedTask.delay_or_fail(token=token + "-bob")
        wait_ready(client, result.id, ALICE)
        wait_ready(client, theirs.id, BOB)
    mine = client.get("/jobtastic/jobs", headers=ALICE).get_json()["jobs"]
    assert [job["id"] for job in mine if job["id"] in (result.id, theirs.id)] == [result.id]
    record = next(job for job in mine if job["id"] == result.id)
    assert record["owner"] == "alice" and record["description"] == "A tracked test job"
    assert record["state"] == "succeeded" and record["progress"] == 100
    # the web process saw its own "queued"; the worker's changes happen in its process
    assert changes == [(None, "queued")]


def test_mark_seen_refuses_others_and_unfinished_jobs(owned_app, token):
    client = owned_app.test_client()
    with owned_app.test_request_context(headers=ALICE):
        running = TrackedTask.delay_or_fail(token=token, seconds=3.0)
        finished = TrackedTask.delay_or_fail(token=token + "-2", seconds=0.1)
    wait_ready(client, finished.id, ALICE)
    others = client.post(f"/jobtastic/jobs/{finished.id}/seen", headers={**BOB, **POST})
    assert others.status_code == 404
    unfinished = client.post(f"/jobtastic/jobs/{running.id}/seen", headers={**ALICE, **POST})
    assert unfinished.status_code == 409
    no_header = client.post(f"/jobtastic/jobs/{finished.id}/seen", headers=ALICE)
    assert no_header.status_code == 400
    mine = client.post(f"/jobtastic/jobs/{finished.id}/seen", headers={**ALICE, **POST})
    assert mine.status_code == 200 and mine.get_json()["seen"] is True


def test_track_state_per_call_reaches_the_worker(owned_app, token):
    client = owned_app.test_client()
    with owned_app.test_request_context(headers=ALICE):
        result = CountedTask.apply_async(
            kwargs={"token": token, "value": 1, "seconds": 0.1},
            track_state=True,
            description="one tracked call",
        )
    wait_ready(client, result.id, ALICE)
    time.sleep(0.2)
    jobs = client.get("/jobtastic/jobs?all=1", headers=ALICE).get_json()["jobs"]
    record = next(job for job in jobs if job["id"] == result.id)
    assert record["description"] == "one tracked call"
    assert record["state"] == "succeeded"  # written by the worker, told by the message
