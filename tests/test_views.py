"""The status endpoint over a real worker and Redis result backend."""

from __future__ import annotations

import uuid

import pytest

from tests.polling import poll
from tests.tasks import DivisionTask, FailingTask, SlowProgressTask

pytestmark = pytest.mark.usefixtures("celery_worker")


def test_malformed_id_is_400_json(client):
    for bad in ("not-a-uuid", "1234", "x" * 300, "../../etc/passwd", "%00"):
        response = client.get(f"/jobtastic/status/{bad}")
        assert response.status_code == 400
        assert response.get_json()["error"]["type"] == "BadRequest"


def test_unknown_id_is_404_unknown(client):
    task_id = str(uuid.uuid4())
    response = client.get(f"/jobtastic/status/{task_id}")
    assert response.status_code == 404
    assert response.get_json() == {
        "task_id": task_id,
        "state": "UNKNOWN",
        "ready": False,
        "progress_percent": 0,
        "time_remaining": -1,
    }


def test_pending_while_queued(app, client, token):
    with app.app_context():
        result = SlowProgressTask.apply_async(kwargs={"token": token}, countdown=30)
    try:
        response = client.get(f"/jobtastic/status/{result.id}")
        assert response.status_code == 200
        document = response.get_json()
        assert document["state"] == "PENDING" and document["ready"] is False
        assert document["progress_percent"] == 0 and document["time_remaining"] == -1
        assert response.headers["Cache-Control"] == "no-store"
    finally:
        result.revoke()


def test_progress_then_success(app, client, token):
    with app.app_context():
        result = SlowProgressTask.delay_or_fail(token=token, seconds=2.0, steps=20)
    _, running = poll(
        client, result.id, lambda d: d["state"] == "PROGRESS" and d["progress_percent"] > 0
    )
    assert 0 < running["progress_percent"] < 100
    assert running["ready"] is False
    _, done = poll(client, result.id, lambda d: d["ready"])
    assert done["state"] == "SUCCESS" and done["progress_percent"] == 100
    assert done["result"] == token and "error" not in done


def test_failure_shows_an_error_but_no_traceback_or_internals(app, client, token):
    with app.app_context():
        result = FailingTask.delay_or_fail(token=token)
    response, done = poll(client, result.id, lambda d: d["ready"])
    assert done["state"] == "FAILURE" and "result" not in done
    assert done["error"]["type"] == "ValueError"
    body = response.get_data(as_text=True)
    assert "Traceback" not in body and "secret internal detail" not in body
    assert done["error"]["error_id"] in done["error"]["message"]


def test_user_facing_failure_message_is_shown(app, client, token):
    with app.app_context():
        result = FailingTask.delay_or_fail(token=token, user_facing=True)
    _, done = poll(client, result.id, lambda d: d["ready"])
    assert done["error"]["message"] == "The CSV header is missing 'email'"


def test_seed_division_example_through_the_endpoint(app, client, token):
    with app.app_context():
        result = DivisionTask.delay_or_fail(
            numerators=list(range(0, 40, 2)), denominators=list(range(1, 21)), token=token
        )
    _, done = poll(client, result.id, lambda d: d["ready"])
    assert done["result"][:3] == [0.0, 1.0, 4 / 3]


def test_batch_status_by_post_only_reads_and_needs_no_header(client):
    """As the README says: only the POSTs that change something need X-Requested-With."""
    task_id = str(uuid.uuid4())
    response = client.post("/jobtastic/status", json={"task_ids": [task_id]})
    assert response.status_code == 200
    assert response.get_json()["tasks"][task_id]["state"] == "UNKNOWN"
    refused = client.post(f"/jobtastic/cancel/{task_id}")
    assert (
        refused.status_code == 400 and "X-Requested-With" in refused.get_json()["error"]["message"]
    )
