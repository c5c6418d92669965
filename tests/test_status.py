from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime

import pytest
import redis

from flask_jobtastic import JobFailed
from flask_jobtastic.status import (
    GENERIC_STEP_FAILURE,
    UNREADABLE_MESSAGE,
    build_status,
    error_id_for,
)
from tests import strict
from tests.app_factory import close_app, create_app
from tests.strict import strict_loads

TID = "0b8f0d39-9a38-4c55-9d7e-4a1c7b0f6a11"


def test_unknown_when_nothing_is_stored():
    doc = build_status(TID, {"status": "PENDING", "result": None})
    assert doc["state"] == "UNKNOWN" and doc["ready"] is False


def test_pending_as_recorded_at_send_time():
    doc = build_status(TID, {"status": "PENDING", "result": {"queued_at": 1.0}, "task_id": TID})
    assert doc["state"] == "PENDING"
    assert doc["progress_percent"] == 0 and doc["time_remaining"] == -1


def test_a_started_job_does_not_show_the_worker_pid_or_host():
    """With Celery's task_track_started, the meta of STARTED names the worker process."""
    meta = {"status": "STARTED", "task_id": TID, "result": {"pid": 4242, "hostname": "w@db-7"}}
    doc = build_status(TID, meta)
    assert doc["state"] == "STARTED"
    assert "pid" not in doc and "hostname" not in doc
    assert "4242" not in json.dumps(doc) and "db-7" not in json.dumps(doc)


def test_progress_fields_are_clamped_and_extras_kept():
    meta = {
        "status": "PROGRESS",
        "task_id": TID,
        "result": {"progress_percent": 140, "time_remaining": 12.5, "rate": 3.0, "state": "HACKED"},
    }
    doc = build_status(TID, meta)
    assert doc["state"] == "PROGRESS"
    assert doc["progress_percent"] == 100 and doc["time_remaining"] == 12.5
    assert doc["rate"] == 3.0


def test_success_carries_result_and_100():
    doc = build_status(TID, {"status": "SUCCESS", "result": [1, 2], "task_id": TID})
    assert doc == {
        "task_id": TID,
        "state": "SUCCESS",
        "ready": True,
        "progress_percent": 100,
        "time_remaining": 0,
        "result": [1, 2],
    }


def test_failure_hides_internal_messages_but_shows_user_facing_ones():
    internal = build_status(
        TID, {"status": "FAILURE", "task_id": TID, "result": ValueError("db password is hunter2")}
    )
    assert internal["ready"] is True and "result" not in internal
    assert "hunter2" not in internal["error"]["message"]
    assert internal["error"]["error_id"] == error_id_for(TID)
    assert error_id_for(TID) in internal["error"]["message"]
    assert internal["error"]["type"] == "ValueError"

    shown = build_status(
        TID,
        {
            "status": "FAILURE",
            "task_id": TID,
            "result": JobFailed("The CSV header is missing 'email'"),
        },
    )
    assert shown["error"]["message"] == "The CSV header is missing 'email'"

    exposed = build_status(
        TID,
        {"status": "FAILURE", "task_id": TID, "result": ValueError("details")},
        expose_errors=True,
    )
    assert exposed["error"]["message"] == "details"


def test_failure_with_unrebuilt_exception_dict():
    doc = build_status(
        TID,
        {
            "status": "FAILURE",
            "task_id": TID,
            "result": {"exc_type": "Weird", "exc_message": ["x"]},
        },
    )
    assert doc["error"]["type"] == "Weird"


# -- strict JSON whatever the meta holds ------------------------------------------


def _strict(document: dict) -> dict:
    """The document survives strict JSON unchanged (no NaN, no Python objects)."""
    assert strict_loads(json.dumps(document)) == document
    return document


def test_kombu_typed_values_of_an_older_version_are_shown_by_the_rule():
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    doc = _strict(
        build_status(
            TID,
            {"status": "SUCCESS", "task_id": TID, "result": {"at": when, "id": uuid.UUID(int=1)}},
        )
    )
    assert doc["result"] == {
        "at": "2024-05-01T12:00:00+00:00",
        "id": "00000000-0000-0000-0000-000000000001",
    }


@pytest.mark.parametrize(
    "result", [b"raw", {"rows": [float("nan")]}, float("inf"), {"x": object()}, {1, 2}]
)
def test_a_result_no_rule_can_show_reads_as_an_unreadable_record(result, caplog):
    doc = _strict(build_status(TID, {"status": "SUCCESS", "task_id": TID, "result": result}))
    assert doc["state"] == "FAILURE" and doc["ready"] is True and "result" not in doc
    assert doc["error"]["type"] == "UnreadableRecord"
    assert doc["error"]["message"] == UNREADABLE_MESSAGE.format(error_id=error_id_for(TID))
    assert error_id_for(TID) in caplog.text  # support finds the reason in the log
    exposed = build_status(
        TID, {"status": "SUCCESS", "task_id": TID, "result": result}, expose_errors=True
    )
    assert exposed["error"]["message"].startswith("its result holds result")


def test_progress_fields_no_rule_can_show_are_left_out_and_the_bar_goes_on():
    meta = {
        "status": "PROGRESS",
        "task_id": TID,
        "result": {
            "progress_percent": float("nan"),
            "time_remaining": float("inf"),
            "rate": float("nan"),
            "completed": 3,
            "total": 10,
            "note": b"bytes",
        },
    }
    doc = _strict(build_status(TID, meta))
    assert doc["state"] == "PROGRESS" and doc["ready"] is False
    assert doc["progress_percent"] == 0 and doc["time_remaining"] == -1
    assert "rate" not in doc and "note" not in doc
    assert (doc["completed"], doc["total"]) == (3, 10)


@pytest.mark.parametrize("status", [5, ["PROGRESS"], {"a": 1}])
def test_a_state_that_is_not_text_reads_as_an_unreadable_record(status):
    doc = _strict(build_status(TID, {"status": status, "task_id": TID, "result": None}))
    assert doc["state"] == "FAILURE" and doc["error"]["type"] == "UnreadableRecord"


def test_a_failure_of_odd_stored_values_still_reads_as_a_failure():
    class Mute(Exception):
        def __str__(self):
            raise RuntimeError("no text")

    for info in (Mute(), b"\xff", {"exc_type": b"T", "exc_message": [b"x", 1]}, None):
        doc = _strict(build_status(TID, {"status": "FAILURE", "task_id": TID, "result": info}))
        assert doc["state"] == "FAILURE" and error_id_for(TID) in doc["error"]["message"]


# -- step errors follow the rule of job errors ------------------------------------

STEPS = [
    {"key": "a", "state": "done", "error": None},
    {
        "key": "b",
        "state": "failed",
        "error": {"type": "OperationalError", "message": "pw=hunter2", "user_facing": False},
    },
    {
        "key": "c",
        "state": "failed",
        "error": {"type": "JobFailed", "message": "No header row", "user_facing": True},
    },
    {"key": "d", "state": "failed", "error": {"type": "KeyError", "message": "older: no flag"}},
]


@pytest.mark.parametrize("where", ["progress", "detail"])
def test_step_errors_are_generic_unless_meant_for_the_user(where):
    if where == "progress":
        meta = {"status": "PROGRESS", "task_id": TID, "result": {"steps": STEPS}}
        doc = build_status(TID, meta)
    else:
        meta = {"status": "SUCCESS", "task_id": TID, "result": 1}
        doc = build_status(TID, meta, detail={"steps": STEPS})
    errors = {step["key"]: step["error"] for step in _strict(doc)["steps"]}
    generic = GENERIC_STEP_FAILURE.format(error_id=error_id_for(TID))
    assert errors["a"] is None
    assert errors["b"] == {
        "type": "OperationalError",
        "message": generic,
        "error_id": error_id_for(TID),
    }
    assert errors["c"] == {
        "type": "JobFailed",
        "message": "No header row",
        "error_id": error_id_for(TID),
    }
    assert errors["d"]["message"] == generic  # no flag: not meant for the user
    assert "hunter2" not in json.dumps(doc)


def test_exposed_errors_show_step_messages_as_stored():
    meta = {"status": "PROGRESS", "task_id": TID, "result": {"steps": STEPS}}
    doc = build_status(TID, meta, expose_errors=True)
    assert [s["error"]["message"] for s in doc["steps"][1:]] == [
        "pw=hunter2",
        "No header row",
        "older: no flag",
    ]


# -- foreign records planted in the real Redis result backend ----------------------


@pytest.fixture
def plant(redis_server):
    """Store raw bytes under Celery's (or our side) key of a new task id."""
    client = redis.Redis.from_url(os.environ["JOBTASTIC_TEST_BACKEND_URL"])
    planted: list[str] = []

    def store(raw: bytes) -> str:
        task_id, keys = strict.plant(client, raw)
        planted.extend(keys)
        return task_id

    yield store
    if planted:
        client.delete(*planted)
    client.close()


@pytest.mark.parametrize("name", sorted(strict.FOREIGN))
def test_a_foreign_record_gives_a_clear_document_on_every_endpoint(client, plant, name):
    raw, expected = strict.FOREIGN[name]
    task_id = plant(raw)
    document = strict.status(client, task_id)
    if expected is not None:
        assert document["state"] == expected
    if document["state"] == "FAILURE":
        assert error_id_for(task_id) in document["error"]["message"]
    assert "hunter2" not in json.dumps(document) and "rm -rf" not in json.dumps(document)
    # one foreign record does not take a batch of good ones down with it
    unknown = str(uuid.uuid4())
    documents = strict.batch(client, task_id, unknown)
    assert documents[task_id] == document and documents[unknown]["state"] == "UNKNOWN"
    events = strict.stream(client, task_id) if document["ready"] else []
    assert [payload for _, payload in events] == ([document] if document["ready"] else [])
    cancelled = client.post(f"/jobtastic/cancel/{task_id}", headers={"X-Requested-With": "test"})
    strict.body_of(cancelled)  # whatever it answers, strict JSON and no 5xx


def test_the_kombu_datetime_of_an_older_version_reads_as_iso_8601(client, plant):
    task_id = plant(strict.FOREIGN["kombu datetime"][0])
    assert strict.status(client, task_id)["result"] == "2024-05-01T12:00:00"


@pytest.mark.parametrize(
    "run",
    [b"not json", b"[1]", b'{"ended_at": 1, "alive_for": 1, "steps": [NaN], "counts": {"a": 1}}'],
)
def test_a_foreign_run_record_leaves_out_only_what_cannot_be_shown(client, plant, run):
    task_id = plant(b'{"status": "SUCCESS", "result": 1, "task_id": "%s"}')
    redis_client = redis.Redis.from_url(client.application.config["CELERY"]["result_backend"])
    redis_client.set(f"jobtastic-run-{task_id}", run, ex=300)  # over the alive marker
    redis_client.close()
    document = strict.status(client, task_id)
    assert document["state"] == "SUCCESS" and document["result"] == 1
    assert "steps" not in document
    if b"counts" in run:
        assert document["counts"] == {"a": 1}


def test_foreign_registry_records_are_left_out_of_the_job_list(redis_server, token):
    app = create_app(owner_header="X-User")
    owner = f"owner-{token}"
    registry = redis.Redis.from_url(os.environ["JOBTASTIC_TEST_BACKEND_URL"])
    store = app.extensions["jobtastic"].registry.store
    ids = [str(uuid.uuid4()) for _ in range(3)]
    fields = {"id": ids[0], "task_name": "t", "state": "running", "updated_at": "1.0"}
    try:
        registry.hset(store.job_key(ids[0]), mapping={**fields, "created_at": "nan"})
        registry.hset(store.job_key(ids[1]), mapping={**fields, "created_at": b"\xff\xfe"})
        registry.hset(store.job_key(ids[2]), mapping={**fields, "created_at": "inf"})
        registry.zadd(store.owner_key(owner), {job_id: 1.0 for job_id in ids})
        jobs = strict.body_of(
            app.test_client().get("/jobtastic/jobs?all=1", headers={"X-User": owner})
        )
    finally:
        registry.delete(*(store.job_key(job_id) for job_id in ids), store.owner_key(owner))
        registry.close()
        close_app(app)
    assert jobs == {"jobs": []}
