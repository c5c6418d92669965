"""The Server-Sent Events stream over the real Redis result backend's pub/sub."""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

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
            elif block.startswith("id:"):
                yield "id", block[len("id: ") :]
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


# -- several jobs on one stream, and the owner's jobs ------------------------------


def read_until(events, predicate, limit=200):
    """Events up to and including the first that ``predicate`` accepts."""
    seen = []
    for name, payload in events:
        seen.append((name, payload))
        if predicate(name, payload) or len(seen) >= limit:
            return seen
    return seen


@pytest.fixture
def owned_app(make_app):
    return make_app(owner_header="X-User")


ALICE = {"X-User": "alice"}


def test_one_stream_carries_several_jobs_each_event_naming_its_job(owned_app, token):
    client = owned_app.test_client()
    with owned_app.test_request_context(headers=ALICE):
        quick = SlowProgressTask.delay_or_fail(token=token + "q", seconds=0.3, steps=3).id
        slow = SlowProgressTask.delay_or_fail(token=token + "s", seconds=1.5, steps=6).id
    with owned_app.test_request_context(headers={"X-User": "bob"}):
        bobs = SlowProgressTask.delay_or_fail(token=token + "b", seconds=0.2, steps=2).id
    response = client.get(
        f"/jobtastic/events?ids={quick},{slow},{bobs}", headers=ALICE, buffered=False
    )
    assert response.status_code == 200
    try:
        events = list(parse(response.response))
    finally:
        response.close()
    statuses = [payload for name, payload in events if name == "status"]
    by_job: dict[str, list[str]] = {}
    for document in statuses:
        by_job.setdefault(document["task_id"], []).append(document["state"])
    assert by_job[quick][-1] == "SUCCESS" and by_job[slow][-1] == "SUCCESS"
    assert "PROGRESS" in by_job[slow]  # it streamed while running
    assert by_job[bobs] == ["UNKNOWN"]  # bob's job reads as unknown to alice
    assert events[-1][0] == "done"  # and the stream ends once every job is final


def test_a_reconnect_with_its_cursor_receives_only_what_changed(owned_app, token):
    client = owned_app.test_client()
    with owned_app.test_request_context(headers=ALICE):
        done = SlowProgressTask.delay_or_fail(token=token + "d", seconds=0.1, steps=1)
        done.get(timeout=15)
        running = SlowProgressTask.delay_or_fail(token=token + "r", seconds=2.0, steps=4).id
    url = f"/jobtastic/events?ids={done.id},{running}"
    response = client.get(url, headers=ALICE, buffered=False)
    try:
        first = read_until(parse(response.response), lambda name, _: name == "id")
    finally:
        response.close()
    cursor = first[-1][1]
    assert any(name == "status" and p["task_id"] == done.id for name, p in first)
    again = client.get(url, headers={**ALICE, "Last-Event-ID": cursor}, buffered=False)
    try:
        events = list(parse(again.response))
    finally:
        again.close()
    resent = [p["task_id"] for name, p in events if name == "status"]
    assert done.id not in resent  # the browser has it already
    assert resent and set(resent) == {running}  # what changed is sent
    assert events[-1][0] == "done"


def test_the_owner_stream_shows_jobs_started_later_and_their_removal(owned_app, token):
    client = owned_app.test_client()
    response = client.get("/jobtastic/events/jobs", headers=ALICE, buffered=False)
    assert response.status_code == 200
    events = parse(response.response)
    try:
        next(events)  # the retry hint
        with owned_app.test_request_context(headers=ALICE):
            from tests.tasks import TrackedTask

            job = TrackedTask.delay_or_fail(token=token, seconds=0.5).id
        added = read_until(events, lambda name, p: name == "job" and p["id"] == job)
        assert added[-1][1]["state"] in ("queued", "running")
        finished = read_until(
            events, lambda name, p: name == "job" and p["id"] == job and p["finished"]
        )
        assert finished[-1][1]["state"] == "succeeded"
        owned_app.extensions["jobtastic"].registry.forget(job)
        removed = read_until(events, lambda name, p: name == "removed")
        assert removed[-1][1] == {"task_id": job}
    finally:
        response.close()


def test_the_owner_stream_needs_a_current_user(owned_app):
    response = owned_app.test_client().get("/jobtastic/events/jobs")
    assert response.status_code == 404 and response.is_json


def test_bad_id_lists_are_refused_like_the_batch_status(client):
    assert client.get("/jobtastic/events?ids=").status_code == 400
    assert client.get("/jobtastic/events?ids=nope").status_code == 400
    many = ",".join(str(uuid.uuid4()) for _ in range(101))
    assert client.get(f"/jobtastic/events?ids={many}").status_code == 400


# -- many viewers on one gevent web process ------------------------------------------


def open_streams(url: str, paths: list[str], headers: dict[str, str]) -> list[Any]:
    """Raw HTTP/1.1 connections, one per path, each reading its event stream."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    sockets = []
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    for path in paths:
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
        sockets.append(sock)
    return sockets


def read_all_until(sockets: list[Any], marker: bytes, timeout: float) -> list[bytes]:
    """Everything each connection received until it carried ``marker`` (or time ran out)."""
    import selectors

    received = [b""] * len(sockets)
    selector = selectors.DefaultSelector()
    for index, sock in enumerate(sockets):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, index)
    pending = set(range(len(sockets)))
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            index = key.data
            try:
                chunk = key.fileobj.recv(65536)
            except BlockingIOError:
                continue
            received[index] += chunk
            if marker in received[index] or not chunk:
                pending.discard(index)
                selector.unregister(key.fileobj)
    selector.close()
    return received


def redis_connections(pids: list[int], port: int) -> int:
    import psutil

    return sum(
        1
        for pid in pids
        for conn in psutil.Process(pid).net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == port and conn.status == "ESTABLISHED"
    )


def test_a_gevent_web_process_serves_many_viewers_on_one_subscription(redis_server, token):
    from tests.web_server import GunicornServer

    server = GunicornServer(
        f"gevent-{token[:8]}",
        worker_class="gevent",
        config={"JOBTASTIC_EVENTS_MAX_PER_PROCESS": 1000, "JOBTASTIC_EVENTS_MAX_PER_OWNER": 1000},
    ).start()
    sockets: list[Any] = []
    try:
        headers = {"X-User": f"viewer-{token[:8]}", "Content-Type": "application/json"}
        import urllib.request

        jobs = []
        for n in range(4):
            body = json.dumps({"token": f"{token}{n}", "seconds": 2.0, "steps": 8}).encode()
            request = urllib.request.Request(
                f"{server.url}/start/slow", data=body, headers=headers, method="POST"
            )
            jobs.append(json.load(urllib.request.urlopen(request, timeout=10))["task_id"])
        redis_port = int(redis_server.url.rsplit(":", 1)[1].split("/")[0])
        # the sends' own: the broker's producer pool, a request's result backend
        before = redis_connections(server.worker_pids(), redis_port)
        paths = [f"/jobtastic/events?ids={jobs[n % 4]}" for n in range(200)]
        sockets = open_streams(server.url, paths, {"X-User": headers["X-User"]})
        time.sleep(1.0)  # every stream open, the jobs running
        held = redis_connections(server.worker_pids(), redis_port) - before
        received = read_all_until(sockets, b"event: done", timeout=30)
    finally:
        for sock in sockets:
            sock.close()
        server.stop()
    finished = [r for r in received if b'"state":"SUCCESS"' in r and b"event: done" in r]
    assert len(finished) == 200, server.log_text()  # every viewer saw its job end
    assert sum(r.count(b'"state":"PROGRESS"') > 1 for r in received) >= 150  # pushed live
    assert held <= 2, f"200 streams hold {held} Redis connections"  # pub/sub and a reader


def test_the_owner_stream_reads_other_owners_jobs_as_unknown(owned_app, token):
    with owned_app.test_request_context(headers={"X-User": "bob"}):
        bobs = SlowProgressTask.delay_or_fail(token=token + "b", seconds=0.2, steps=2).id
    client = owned_app.test_client()
    response = client.get(f"/jobtastic/events/jobs?ids={bobs}", headers=ALICE, buffered=False)
    assert response.status_code == 200
    try:
        seen = read_until(parse(response.response), lambda name, _: name == "status")
    finally:
        response.close()
    document = seen[-1][1]
    assert document["task_id"] == bobs and document["state"] == "UNKNOWN"
    assert "progress_percent" not in document or document["progress_percent"] == 0


def test_a_refused_owner_stream_names_no_job(make_app):
    app = make_app(owner_header="X-User", JOBTASTIC_EVENTS_MAX_PER_OWNER=0)
    response = app.test_client().get("/jobtastic/events/jobs", headers=ALICE)
    assert response.status_code == 429
    body = response.get_json()
    assert "task_id" not in body and body["error"]["type"] == "TooManyStreams"
