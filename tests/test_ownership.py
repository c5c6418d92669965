"""Owner-scoped endpoints and cancel, over the real worker and Redis; the
herd tests again with a RabbitMQ broker."""

from __future__ import annotations

import time

import pytest
from flask import Flask

from tests.app_factory import close_app, create_app
from tests.rig import every_broker
from tests.tasks import CountedTask, SlowProgressTask

pytestmark = pytest.mark.usefixtures("celery_worker")

ALICE = {"X-User": "alice"}
BOB = {"X-User": "bob"}
POST = {"X-Requested-With": "test"}


@pytest.fixture
def owned_app(make_app):
    """An app whose current user is the ``X-User`` header (on ``broker_name``'s broker)."""
    return make_app(owner_header="X-User")


def send_as(app: Flask, headers: dict, task_cls, **kwargs):
    with app.test_request_context(headers=headers):
        return task_cls.delay_or_fail(**kwargs)


def test_status_of_anothers_job_is_404_like_an_unknown_one(owned_app, token):
    result = send_as(owned_app, ALICE, SlowProgressTask, token=token, seconds=0.3)
    client = owned_app.test_client()
    mine = client.get(f"/jobtastic/status/{result.id}", headers=ALICE)
    assert mine.status_code == 200 and mine.get_json()["state"] in ("PENDING", "PROGRESS")
    theirs = client.get(f"/jobtastic/status/{result.id}", headers=BOB)
    anonymous = client.get(f"/jobtastic/status/{result.id}")
    for response in (theirs, anonymous):
        assert response.status_code == 404
        assert response.get_json()["state"] == "UNKNOWN"
    batch = client.post("/jobtastic/status", json={"task_ids": [result.id]}, headers=BOB)
    assert batch.get_json()["tasks"][result.id]["state"] == "UNKNOWN"
    assert client.get(f"/jobtastic/events/{result.id}", headers=BOB).status_code == 404
    cancel = client.post(f"/jobtastic/cancel/{result.id}", headers={**BOB, **POST})
    assert cancel.status_code == 404


def test_unowned_jobs_are_hidden_once_owners_exist_unless_allowed(token):
    strict = create_app(owner_header="X-User")
    lenient = create_app(owner_header="X-User", JOBTASTIC_ALLOW_UNOWNED=True)
    try:
        with strict.app_context():  # sent outside any request: no owner
            result = CountedTask.delay_or_fail(token=token, value=1, seconds=0)
        assert strict.test_client().get(f"/jobtastic/status/{result.id}").status_code == 404
        assert lenient.test_client().get(f"/jobtastic/status/{result.id}").status_code == 200
    finally:
        close_app(strict)
        close_app(lenient)


def test_without_an_owner_loader_ids_alone_read_jobs(app, client, token):
    with app.app_context():
        result = CountedTask.delay_or_fail(token=token, value=2, seconds=0)
    assert client.get(f"/jobtastic/status/{result.id}").status_code == 200


@every_broker
def test_identical_calls_of_two_owners_are_two_jobs_each_readable_by_its_owner(owned_app, token):
    client = owned_app.test_client()
    alices = send_as(owned_app, ALICE, CountedTask, token=token, value=1, seconds=0.2)
    bobs = send_as(owned_app, BOB, CountedTask, token=token, value=1, seconds=0.2)
    assert alices.id != bobs.id
    for result, headers in ((alices, ALICE), (bobs, BOB)):
        deadline = time.monotonic() + 10
        while not client.get(f"/jobtastic/status/{result.id}", headers=headers).get_json()["ready"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    # each one's cached result comes back to that owner only
    assert send_as(owned_app, ALICE, CountedTask, token=token, value=1).id == alices.id
    assert send_as(owned_app, BOB, CountedTask, token=token, value=1).id == bobs.id


@every_broker
def test_jobs_shared_across_owners_run_once_and_are_readable_by_both(owned_app, token):
    from tests.tasks import SharedReportTask, runs

    client = owned_app.test_client()
    alices = send_as(owned_app, ALICE, SharedReportTask, token=token)
    bobs = send_as(owned_app, BOB, SharedReportTask, token=token)
    assert alices.id == bobs.id
    assert client.get(f"/jobtastic/status/{bobs.id}", headers=BOB).status_code == 200
    deadline = time.monotonic() + 10
    while not client.get(f"/jobtastic/status/{alices.id}", headers=ALICE).get_json()["ready"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert runs(token) == 1


def test_an_owner_id_that_is_not_valid_text_still_gets_json_answers(token):
    """An owner loader may hand back any str (a lone surrogate from a header, say):
    the job list and its HTML answer as for anyone else, never a 500."""
    app = create_app(owner_header="X-User")
    try:
        app.extensions["jobtastic"].extension.owner_loader(lambda: "user-\udc80-" + token)
        client = app.test_client()
        listed = client.get("/jobtastic/jobs")
        assert listed.status_code == 200 and listed.get_json() == {"jobs": []}
        assert client.get("/jobtastic/jobs.html").status_code == 200
    finally:
        close_app(app)
