"""Reading and writing job records in a real Redis result backend."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from celery import Celery

from flask_jobtastic import results, side_records


@pytest.fixture()
def backend(redis_server):
    celery = Celery(broker="memory://", backend=redis_server.url)
    yield celery.backend
    celery.backend.client.connection_pool.disconnect()


def test_an_id_nobody_stored_reads_as_a_placeholder_without_side_records(backend):
    view = results.read_job(backend, str(uuid.uuid4()))
    assert "task_id" not in view.meta
    assert view.job is None and view.detail is None
    assert view.is_alive is False


def test_queued_record_carries_the_job_record_and_never_overwrites_a_result(backend):
    task_id = str(uuid.uuid4())
    results.record_queued(backend, task_id, {}, job={"owner": "ada", "herd_key": "h"})
    view = results.read_job(backend, task_id)
    assert view.meta["status"] == "PENDING" and view.meta["task_id"] == task_id
    assert view.job == {"owner": "ada", "herd_key": "h"}
    backend.store_result(task_id, {"rows": 3}, "SUCCESS")
    assert results.read_job(backend, task_id).meta["result"] == {"rows": 3}


def test_first_progress_write_sets_the_alive_marker_and_publishes_every_meta(backend):
    task_id = str(uuid.uuid4())
    pubsub = backend.client.pubsub()
    pubsub.subscribe(backend.get_key_for_task(task_id))
    pubsub.get_message(timeout=1)
    results.write_progress(
        backend, task_id, {"progress_percent": 0}, {"progress_percent": 40}, alive_for=5
    )
    published = []
    while len(published) < 2:
        message = pubsub.get_message(timeout=2)
        assert message is not None, "a progress meta was not published"
        if message["type"] == "message":
            published.append(json.loads(message["data"])["result"]["progress_percent"])
    pubsub.close()
    assert published == [0, 40]
    view = results.read_job(backend, task_id)
    assert view.meta["status"] == "PROGRESS" and view.meta["result"]["progress_percent"] == 40
    assert view.is_alive is True and view.detail is None
    assert 0 < backend.client.ttl(side_records.side_key("run", task_id)) <= 5


def test_details_left_at_the_end_keep_the_job_alive_only_while_celery_stores_the_result(
    backend,
):
    task_id = str(uuid.uuid4())
    results.write_progress(backend, task_id, {"progress_percent": 100}, alive_for=5)
    steps = [{"key": "load", "state": "done"}]
    details = side_records.details_record({"steps": steps}, 5)
    side_records.write_side(backend, "run", task_id, details)
    view = results.read_job(backend, task_id)
    assert view.is_alive is True  # not reported as a lost worker in that instant
    assert view.detail["steps"] == steps
    side_records.write_side(
        backend, "run", task_id, {side_records.ENDED_FIELD: time.time() - 60, "alive_for": 5}
    )
    assert results.read_job(backend, task_id).is_alive is False  # it died before storing


def test_a_batch_mixes_states_and_keeps_the_order_of_the_ids(backend):
    done, failed, running, unknown = (str(uuid.uuid4()) for _ in range(4))
    backend.store_result(done, "ok", "SUCCESS")
    backend.mark_as_failure(failed, ValueError("boom"))
    results.write_progress(backend, running, {"progress_percent": 10}, alive_for=5)
    views = results.read_jobs(backend, [unknown, running, failed, done, running])
    assert list(views) == [unknown, running, failed, done]
    assert "task_id" not in views[unknown].meta
    assert views[running].is_alive is True
    assert isinstance(views[failed].meta["result"], ValueError)  # rebuilt by Celery
    assert views[done].meta["result"] == "ok"


def test_a_corrupt_record_is_read_on_its_own_without_spoiling_the_batch(backend):
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    backend.store_result(good, [1, 2], "SUCCESS")
    backend.store_result(bad, "fine", "SUCCESS")
    backend.client.set(side_records.side_key("job", bad), b"1,2")  # not one JSON value
    views = results.read_jobs(backend, [good, bad])
    assert views[good].meta["result"] == [1, 2]
    assert views[bad].meta["result"] == "fine"
    assert views[bad].job is None


def test_typed_values_go_through_celerys_decoder(backend):
    task_id = str(uuid.uuid4())
    backend.store_result(task_id, {"id": uuid.UUID(int=7)}, "SUCCESS")
    meta = results.read_job(backend, task_id).meta
    assert meta["result"]["id"] == uuid.UUID(int=7)
