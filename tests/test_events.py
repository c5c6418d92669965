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


# --- the stream's steps, on fakes: exact output and timing, no worker needed ---


class FakeTime:
    """``time`` as events.py sees it: a clock that only sleeps and waits move."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakePubSub:
    """Scripted messages, each after a wait; ``"boom"`` raises as a lost server would."""

    def __init__(self, clock: FakeTime, script: list[tuple[float, object]]) -> None:
        self.clock, self.script = clock, list(script)
        self.subscribed: list[str] = []
        self.closed = False

    def subscribe(self, channel: str) -> None:
        self.subscribed.append(channel)

    def get_message(self, timeout: float) -> object:
        waited, message = self.script.pop(0) if self.script else (timeout, None)
        self.clock.now += min(waited, timeout)
        if message == "boom":
            raise ConnectionError("gone")
        return message

    def close(self) -> None:
        self.closed = True


def doc(name: str, ready: bool = False) -> dict[str, object]:
    return {"task_id": "t1", "state": name, "ready": ready}


def run_stream(monkeypatch, reads, *, pubsub=None, heartbeat=1.0, max_seconds=10.0, limit=50):
    """Every chunk the stream yields (at most ``limit``) with its fake time, and the reads.

    ``reads`` are the documents read_job returns one after another (an
    exception instance is raised instead); viewer_document passes them through.
    """
    from types import SimpleNamespace

    from flask_jobtastic import events

    clock = FakeTime() if pubsub is None else pubsub.clock
    pending = list(reads)
    done: list[float] = []

    def read_job(backend, task_id):
        done.append(clock.now)
        value = pending.pop(0)
        if isinstance(value, Exception):
            raise value
        return value

    backend = SimpleNamespace(get_key_for_task=lambda task_id: f"celery-task-meta-{task_id}")
    client = None if pubsub is None else SimpleNamespace(pubsub=lambda **kw: pubsub)
    monkeypatch.setattr(events, "time", clock)
    monkeypatch.setattr(events, "_redis_client", lambda b: client)
    monkeypatch.setattr(events.results, "read_job", read_job)
    monkeypatch.setattr(events, "viewer_document", lambda state, task_id, view: view)
    state = SimpleNamespace(
        celery=SimpleNamespace(backend=backend),
        events_max_seconds=max_seconds,
        events_heartbeat=heartbeat,
        events_poll_interval=0.4,
    )
    out = []
    for chunk in events.event_stream(state, "t1"):
        out.append((round(clock.now, 3), chunk.split("\n", 1)[0] + _state_of(chunk)))
        if len(out) >= limit:
            break
    return out, [round(t, 3) for t in done]


def _state_of(chunk: str) -> str:
    if "data: " not in chunk:
        return ""
    return " " + str(json.loads(chunk.split("data: ", 1)[1]).get("state", "-"))


def test_polled_stream_sends_changes_and_a_heartbeat(monkeypatch):
    reads = [doc("A"), doc("A"), doc("A"), doc("A"), doc("B", ready=True)]
    out, done = run_stream(monkeypatch, reads)
    assert out == [
        (0.0, "retry: 2000"),
        (0.0, "event: status A"),
        (1.2, ": heartbeat"),
        (1.6, "event: status B"),
    ]
    assert done == [0.0, 0.4, 0.8, 1.2, 1.6]


def test_polled_stream_ends_at_its_deadline(monkeypatch):
    out, done = run_stream(monkeypatch, [doc("A")] * 10, max_seconds=1.0)
    assert out == [(0.0, "retry: 2000"), (0.0, "event: status A"), (1.2, ": heartbeat")]
    assert done == [0.0, 0.4, 0.8, 1.2]


def test_pubsub_stream_reads_on_messages_and_rereads_at_heartbeat(monkeypatch):
    clock = FakeTime()
    pubsub = FakePubSub(clock, [(5, None), (0.5, {"type": "message"}), (5, {"type": "x"})])
    reads = [doc("A"), doc("B"), doc("B"), doc("C", ready=True)]
    out, done = run_stream(monkeypatch, reads, pubsub=pubsub, heartbeat=2.0)
    assert out == [
        (0.0, "retry: 2000"),
        (0.0, "event: status A"),
        (1.5, "event: status B"),
        (3.5, ": heartbeat"),  # re-read at the heartbeat: nothing new
        (5.5, "event: status C"),  # re-read at the next one: final
    ]
    assert done == [0.0, 1.5, 3.5, 5.5]
    assert pubsub.subscribed == ["celery-task-meta-t1"] and pubsub.closed


def test_stream_says_unavailable_once_and_ends(monkeypatch):
    unavailable = "event: unavailable -"
    out, _ = run_stream(monkeypatch, [RuntimeError("down")])
    assert [text for _, text in out] == ["retry: 2000", unavailable]
    out, _ = run_stream(monkeypatch, [doc("A"), RuntimeError("down")])
    assert [text for _, text in out] == ["retry: 2000", "event: status A", unavailable]
    pubsub = FakePubSub(FakeTime(), [(0.5, "boom")])
    out, _ = run_stream(monkeypatch, [doc("A")], pubsub=pubsub)
    assert [text for _, text in out][-1] == unavailable and pubsub.closed
    pubsub = FakePubSub(FakeTime(), [])
    out, _ = run_stream(monkeypatch, [doc("A"), RuntimeError("down")], pubsub=pubsub)
    assert out[-1] == (1.0, unavailable)  # the heartbeat re-read failed


def test_stream_frees_its_pubsub_when_the_reader_leaves(monkeypatch):
    pubsub = FakePubSub(FakeTime(), [])
    out, _ = run_stream(monkeypatch, [doc("A")] * 5, pubsub=pubsub, limit=2)
    assert len(out) == 2 and pubsub.closed
