from __future__ import annotations

from flask_jobtastic import JobFailed
from flask_jobtastic.status import build_status, error_id_for

TID = "0b8f0d39-9a38-4c55-9d7e-4a1c7b0f6a11"


def test_unknown_when_nothing_is_stored():
    doc = build_status(TID, {"status": "PENDING", "result": None})
    assert doc["state"] == "UNKNOWN" and doc["ready"] is False


def test_pending_as_recorded_at_send_time():
    doc = build_status(TID, {"status": "PENDING", "result": {"queued_at": 1.0}, "task_id": TID})
    assert doc["state"] == "PENDING"
    assert doc["progress_percent"] == 0 and doc["time_remaining"] == -1


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
