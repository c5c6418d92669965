"""Cancel, as a person uses it: POST /cancel, then watch the status.

Run against a real worker; the stop must not depend on the worker main
process's in-memory revoked set, which prefork pool children never see.
"""

from __future__ import annotations

import time

import pytest

from tests import tasks
from tests.tasks import CancellableTask, SharedLongTask, SilentTask

pytestmark = pytest.mark.usefixtures("celery_worker")

ALICE = {"X-User": "alice"}
BOB = {"X-User": "bob"}
POST = {"X-Requested-With": "test"}


@pytest.fixture
def owned_app():
    from tests.app_factory import close_app, create_app

    app = create_app(owner_header="X-User")
    yield app
    close_app(app)


def send_as(app, headers, task_cls, **kwargs):
    with app.test_request_context(headers=headers):
        return task_cls.delay_or_fail(**kwargs)


def status(client, task_id, headers=ALICE):
    return client.get(f"/jobtastic/status/{task_id}", headers=headers).get_json()


def cancel(client, task_id, headers=ALICE):
    response = client.post(f"/jobtastic/cancel/{task_id}", headers={**headers, **POST})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def wait_for(client, task_id, predicate, headers=ALICE, timeout=15.0):
    """Poll until ``predicate(document)``; returns every document seen on the way."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        document = status(client, task_id, headers)
        seen.append(document)
        if predicate(document):
            return seen
        time.sleep(0.02)
    raise AssertionError(f"{task_id} never matched; last {seen[-1]}")


def running(document):
    return document["state"] == "PROGRESS" and document["progress_percent"] > 0


def test_a_running_job_stops_and_stays_revoked(owned_app, token):
    client = owned_app.test_client()
    result = send_as(owned_app, ALICE, CancellableTask, token=token)
    wait_for(client, result.id, running)
    asked_at = time.monotonic()
    answer = cancel(client, result.id)
    # until the worker confirms, the document says the cancel is pending
    assert answer["state"] == "REVOKED" or answer.get("cancel_pending") is True
    assert answer["state"] == "REVOKED" or answer["ready"] is False
    seen = wait_for(client, result.id, lambda d: d["state"] == "REVOKED")
    latency = time.monotonic() - asked_at
    assert all(d.get("cancel_pending") for d in seen[:-1]), seen
    assert latency < 5, latency
    # the job really stopped: it counts no more iterations, and stays REVOKED
    stopped_at = tasks.ticks(token)
    time.sleep(1.0)
    assert tasks.ticks(token) <= stopped_at + 1
    assert status(client, result.id)["state"] == "REVOKED"
    assert status(client, result.id)["ready"] is True
    # its clean-up hook ran in the worker
    assert tasks.cleaned_up(token)
    # nothing was cached and the herd key is free: the same call runs again
    again = send_as(owned_app, ALICE, CancellableTask, token=token, steps=2)
    assert again.id != result.id
    wait_for(client, again.id, lambda d: d["state"] == "SUCCESS")
    assert tasks.runs(token) == 2


def test_a_queued_job_never_starts(owned_app, token):
    client = owned_app.test_client()
    with owned_app.test_request_context(headers=ALICE):
        result = CancellableTask.apply_async(kwargs={"token": token, "steps": 2}, countdown=2)
    refused = client.post(f"/jobtastic/cancel/{result.id}", headers=ALICE)
    assert refused.status_code == 400  # no X-Requested-With: a cross-site form
    answer = cancel(client, result.id)
    assert answer["state"] in ("PENDING", "REVOKED")
    wait_for(client, result.id, lambda d: d["state"] == "REVOKED")
    time.sleep(3.0)  # past its countdown
    assert tasks.runs(token) == 0
    assert status(client, result.id)["state"] == "REVOKED"


def test_a_silent_job_is_never_shown_stopped_while_it_runs(owned_app, token):
    """A job that never writes cannot be stopped mid-run: the cancel stays
    pending, and it reads REVOKED only once it has really ended."""
    client = owned_app.test_client()
    result = send_as(owned_app, ALICE, SilentTask, token=token, seconds=2.0)
    wait_for(client, result.id, lambda d: d["state"] == "PROGRESS")
    answer = cancel(client, result.id)
    assert answer["state"] == "PROGRESS" and answer["cancel_pending"] is True
    seen = wait_for(client, result.id, lambda d: d["ready"], timeout=10)
    finished = tasks._redis().exists(f"finished:{token}")
    for document in seen[:-1]:
        assert document["state"] == "PROGRESS" and document["cancel_pending"] is True
    assert finished, "REVOKED was shown while the job still ran"
    assert seen[-1]["state"] == "REVOKED"
    # its result is not cached: the same call computes again
    again = send_as(owned_app, ALICE, SilentTask, token=token, seconds=0)
    assert again.id != result.id


def test_identical_calls_join_a_run_being_cancelled_instead_of_starting_beside_it(owned_app, token):
    client = owned_app.test_client()
    result = send_as(owned_app, ALICE, SilentTask, token=token, seconds=1.5)
    wait_for(client, result.id, lambda d: d["state"] == "PROGRESS")
    cancel(client, result.id)
    joined = send_as(owned_app, ALICE, SilentTask, token=token, seconds=1.5)
    assert joined.id == result.id  # the herd key is held until the run stopped
    wait_for(client, result.id, lambda d: d["ready"], timeout=10)
    assert tasks.runs(token) == 1


def test_one_owner_of_a_shared_run_detaches_the_last_one_stops_it(owned_app, token):
    client = owned_app.test_client()
    alices = send_as(owned_app, ALICE, SharedLongTask, token=token)
    bobs = send_as(owned_app, BOB, SharedLongTask, token=token)
    assert alices.id == bobs.id
    wait_for(client, alices.id, running)
    # Alice leaves: her bar says cancelled at once, Bob's run goes on
    answer = cancel(client, alices.id, ALICE)
    assert answer["state"] == "REVOKED" and answer["ready"] is True
    before = tasks.ticks(token)
    time.sleep(0.6)
    assert tasks.ticks(token) > before
    bobs_view = status(client, bobs.id, BOB)
    assert bobs_view["state"] == "PROGRESS" and "cancel_pending" not in bobs_view
    assert status(client, alices.id, ALICE)["state"] == "REVOKED"
    # Bob, the last one waiting, cancels: now the run stops
    cancel(client, bobs.id, BOB)
    wait_for(client, bobs.id, lambda d: d["state"] == "REVOKED", headers=BOB)
    stopped_at = tasks.ticks(token)
    time.sleep(0.6)
    assert tasks.ticks(token) <= stopped_at + 1
    assert tasks.runs(token) == 1


def test_cancel_of_a_finished_job_changes_nothing(owned_app, token):
    client = owned_app.test_client()
    result = send_as(owned_app, ALICE, CancellableTask, token=token, steps=1, pause=0)
    wait_for(client, result.id, lambda d: d["state"] == "SUCCESS")
    answer = cancel(client, result.id)
    assert answer["state"] == "SUCCESS" and answer["result"] == token
