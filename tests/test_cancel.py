"""Cancel, as a person uses it: POST /cancel, then watch the status.

Run against a real worker; the stop must not depend on the worker main
process's in-memory revoked set, which prefork pool children never see.
"""

from __future__ import annotations

import time

import pytest

from tests import tasks
from tests.rig import ARTIFACTS, BROKERS, POOLS
from tests.tasks import CancellableTask, SharedLongTask, SilentTask

ALICE = {"X-User": "alice"}
BOB = {"X-User": "bob"}
POST = {"X-Requested-With": "test"}

#: Every pool on both brokers; the README's own deployment (prefork, one Redis) first.
EVERY_RIG = pytest.mark.parametrize(
    "rig_kind", [(pool, broker) for broker in BROKERS for pool in POOLS], ids="-".join
)
#: The README's pool on both brokers.
EVERY_BROKER = pytest.mark.parametrize(
    "rig_kind", [("prefork", broker) for broker in BROKERS], ids="-".join
)


@pytest.fixture
def rig_kind():
    return ("prefork", "redis")


@pytest.fixture
def owned_app(rig_kind, make_rig):
    pool, broker = rig_kind
    return make_rig(pool, broker, owner_header="X-User").app


def note_latency(rig_kind, seconds):
    """Kept for the record (test-artifacts/cancel-latency.txt), never asserted tightly."""
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / "cancel-latency.txt").open("a") as out:
        out.write(f"{'-'.join(rig_kind)} {seconds * 1000:.0f} ms\n")


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


@EVERY_RIG
def test_a_running_job_stops_and_stays_revoked(owned_app, token, rig_kind):
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
    note_latency(rig_kind, latency)
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


@EVERY_RIG
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


@EVERY_BROKER
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


@EVERY_BROKER
def test_identical_calls_join_a_run_being_cancelled_instead_of_starting_beside_it(owned_app, token):
    client = owned_app.test_client()
    result = send_as(owned_app, ALICE, SilentTask, token=token, seconds=1.5)
    wait_for(client, result.id, lambda d: d["state"] == "PROGRESS")
    cancel(client, result.id)
    joined = send_as(owned_app, ALICE, SilentTask, token=token, seconds=1.5)
    assert joined.id == result.id  # the herd key is held until the run stopped
    wait_for(client, result.id, lambda d: d["ready"], timeout=10)
    assert tasks.runs(token) == 1


@EVERY_BROKER
def test_one_owner_of_a_shared_run_detaches_the_last_one_stops_it(owned_app, token):
    client = owned_app.test_client()
    with owned_app.test_request_context(headers=ALICE):
        alices = SharedLongTask.async_or_fail(kwargs={"token": token}, track_state=True)
    bobs = send_as(owned_app, BOB, SharedLongTask, token=token)
    assert alices.id == bobs.id
    wait_for(client, alices.id, running)
    listed = client.get("/jobtastic/jobs?all=1", headers=ALICE).get_json()["jobs"]
    assert alices.id in [job["id"] for job in listed]
    # Alice leaves: her bar says cancelled at once, Bob's run goes on
    answer = cancel(client, alices.id, ALICE)
    assert answer["state"] == "REVOKED" and answer["ready"] is True
    before = tasks.ticks(token)
    time.sleep(0.6)
    assert tasks.ticks(token) > before
    bobs_view = status(client, bobs.id, BOB)
    assert bobs_view["state"] == "PROGRESS" and "cancel_pending" not in bobs_view
    assert status(client, alices.id, ALICE)["state"] == "REVOKED"
    listed = client.get("/jobtastic/jobs?all=1", headers=ALICE).get_json()["jobs"]
    assert alices.id not in [job["id"] for job in listed]  # her "my jobs" dropped it
    # Bob, the last one waiting, cancels: now the run stops
    cancel(client, bobs.id, BOB)
    wait_for(client, bobs.id, lambda d: d["state"] == "REVOKED", headers=BOB)
    stopped_at = tasks.ticks(token)
    time.sleep(0.6)
    assert tasks.ticks(token) <= stopped_at + 1
    assert tasks.runs(token) == 1
    listed = client.get("/jobtastic/jobs?all=1", headers=ALICE).get_json()["jobs"]
    assert alices.id not in [job["id"] for job in listed]  # and it stays dropped


def test_cancel_of_a_finished_job_changes_nothing(owned_app, token):
    client = owned_app.test_client()
    result = send_as(owned_app, ALICE, CancellableTask, token=token, steps=1, pause=0)
    wait_for(client, result.id, lambda d: d["state"] == "SUCCESS")
    answer = cancel(client, result.id)
    assert answer["state"] == "SUCCESS" and answer["result"] == token


def test_an_open_event_stream_shows_the_pending_cancel_then_the_stop(owned_app, token):
    import json
    import threading

    client = owned_app.test_client()
    result = send_as(owned_app, ALICE, SilentTask, token=token, seconds=2.0)
    wait_for(client, result.id, lambda d: d["state"] == "PROGRESS")
    stream = client.get(f"/jobtastic/events/{result.id}", headers=ALICE, buffered=False)
    threading.Timer(
        0.3,
        lambda: owned_app.test_client().post(
            f"/jobtastic/cancel/{result.id}", headers={**ALICE, **POST}
        ),
    ).start()
    documents = []
    for chunk in stream.response:
        for line in chunk.decode().splitlines():
            if line.startswith("data: "):
                documents.append(json.loads(line[6:]))
        if documents and documents[-1].get("ready"):
            break
    stream.close()
    assert documents[0]["state"] == "PROGRESS" and "cancel_pending" not in documents[0]
    assert any(d.get("cancel_pending") for d in documents), documents
    assert documents[-1]["state"] == "REVOKED"
