"""The Server-Sent Events stream over the real Redis result backend's pub/sub."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest
import redis

from flask_jobtastic.events import format_event
from tests import strict
from tests.tasks import SlowProgressTask

pytestmark = pytest.mark.usefixtures("celery_worker")


def parse(chunks):
    """Yield ("comment"|"retry"|event name, payload) from SSE text chunks."""
    buffer = ""
    for chunk in chunks:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            if block.startswith(":"):
                yield "comment", block
            elif block.startswith("retry:"):
                yield "retry", block
            else:
                lines = dict(line.split(": ", 1) for line in block.splitlines())
                yield lines.get("event", "message"), json.loads(lines["data"])


def test_format_event_is_one_event_with_one_data_line():
    text = format_event({"state": "PROGRESS", "msg": "a\nb"})
    assert text.startswith("event: status\ndata: {") and text.endswith("}\n\n")
    assert text.count("\n") == 3  # newlines inside values stay escaped


def test_stream_pushes_every_change_and_ends_on_success(app, client, token):
    with app.app_context():
        result = SlowProgressTask.delay_or_fail(token=token, seconds=1.5, steps=15)
    response = client.get(f"/jobtastic/events/{result.id}", buffered=False)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-store"
    events = list(parse(response.response))
    response.close()
    assert events[0][0] == "retry"
    documents = [payload for name, payload in events if name == "status"]
    assert documents[-1]["state"] == "SUCCESS" and documents[-1]["result"] == token
    percents = [d["progress_percent"] for d in documents if d["state"] == "PROGRESS"]
    assert len(percents) >= 3  # pushed as it went, not one final answer
    assert percents == sorted(percents)
    assert all(a != b for a, b in zip(documents, documents[1:], strict=False))


def test_finished_job_streams_one_event_and_closes(app, client, token):
    with app.app_context():
        result = SlowProgressTask.delay_or_fail(token=token, seconds=0.1, steps=2)
        result.get(timeout=10)
    response = client.get(f"/jobtastic/events/{result.id}", buffered=False)
    events = [e for e in parse(response.response) if e[0] == "status"]
    response.close()
    assert len(events) == 1 and events[0][1]["state"] == "SUCCESS"


def test_stream_frees_its_subscription_when_the_client_leaves(app, client, token, redis_server):
    with app.app_context():
        result = SlowProgressTask.delay_or_fail(token=token, seconds=3.0, steps=30)
    channel = f"celery-task-meta-{result.id}"
    admin = redis.Redis.from_url(redis_server.url)

    def subscribers() -> int:
        return dict(admin.pubsub_numsub(channel))[channel.encode()]

    slots = app.extensions["jobtastic"].stream_slots
    before = subscribers()  # Celery's own result consumer may listen too
    response = client.get(f"/jobtastic/events/{result.id}", buffered=False)
    stream = parse(response.response)
    next(stream), next(stream)  # the retry hint and the first document
    assert subscribers() == before + 1
    assert slots.open_streams() == 1  # the stream counts against the bounds
    response.close()  # the browser went away
    assert slots.open_streams() == 0  # and its slot is free again at once
    deadline = time.monotonic() + 5
    while subscribers() > before:
        assert time.monotonic() < deadline, "subscription still open after the client left"
        time.sleep(0.05)
    admin.close()


def test_stream_of_malformed_and_unknown_ids(client):
    assert client.get("/jobtastic/events/nope").status_code == 400
    unknown = client.get("/jobtastic/events/0b8f0d39-9a38-4c55-9d7e-4a1c7b0f6a11")
    assert unknown.status_code == 404 and unknown.get_json()["state"] == "UNKNOWN"


def test_foreign_messages_on_the_channel_give_strict_documents(client, redis_server):
    """What another program (or an older version) publishes or stores never breaks
    the stream; a message on the channel only makes it read the job again."""
    task_id = str(uuid.uuid4())
    key = f"celery-task-meta-{task_id}"
    admin = redis.Redis.from_url(os.environ["JOBTASTIC_TEST_BACKEND_URL"])
    progress = (
        b'{"status": "PROGRESS", "result": {"progress_percent": NaN, "rate": Infinity,'
        b' "completed": 1, "total": 4}, "task_id": "%s"}' % task_id.encode()
    )
    admin.set(key, progress, ex=300)
    admin.set(f"jobtastic-run-{task_id}", json.dumps({"alive_at": time.time()}), ex=300)
    response = client.get(f"/jobtastic/events/{task_id}", buffered=False)
    events = strict.sse_events(response.response)
    try:
        name, first = next(events)
        assert name == "status" and first["state"] == "PROGRESS"
        assert first["progress_percent"] == 0 and "rate" not in first
        # a message only says "read again": the stream shows what is stored
        admin.set(key, progress.replace(b"NaN", b"50"), ex=300)
        admin.publish(key, b"anything")
        name, second = next(events)
        assert second["state"] == "PROGRESS" and second["progress_percent"] == 50
        admin.set(key, b"\x80\x04 not json at all", ex=300)
        admin.publish(key, b"\x80\x04 not json at all")
        name, last = next(events)
        assert last["state"] == "FAILURE" and last["error"]["type"] == "UnreadableRecord"
        assert list(events) == []  # a final state ends the stream
    finally:
        response.close()
        admin.delete(key, f"jobtastic-run-{task_id}")
        admin.close()
