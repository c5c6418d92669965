"""Bounds on open event streams (flask_jobtastic/streams.py), down to a real gunicorn.

The gunicorn tests run the README's web server (``-k gthread --threads 32``, one
worker process: the worst case, where one user's streams all land in one
process) with the default bounds, and check what another user notices.
"""

from __future__ import annotations

import http.client
import json
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Flask

from flask_jobtastic import ConfigurationError, Jobtastic, defaults
from flask_jobtastic.streams import StreamSlots, owner_key, watch_client
from tests.app_factory import close_app, create_app
from tests.conftest import ARTIFACTS
from tests.tasks import SlowProgressTask
from tests.web_server import GunicornServer

# -- the counting itself ------------------------------------------------------------


def test_slots_bound_each_owner_and_the_process():
    slots = StreamSlots(per_owner=2, per_process=3)
    a1, _ = slots.acquire("a")
    a2, _ = slots.acquire("a")
    assert slots.acquire("a") == (None, "owner")
    b1, _ = slots.acquire("b")
    assert slots.acquire("c") == (None, "process")  # c has none, but the process is full
    assert slots.open_streams() == 3 and slots.open_streams("a") == 2
    a1()
    a1()  # a second release of the same slot frees nothing more
    assert slots.open_streams() == 2 and slots.open_streams("a") == 1
    c1, bound = slots.acquire("c")
    assert c1 is not None and bound is None
    for release in (a2, b1, c1):
        release()
    assert slots.open_streams() == 0 and slots.open_streams("a") == 0


def test_zero_turns_streams_off():
    assert StreamSlots(per_owner=0, per_process=5).acquire("a") == (None, "owner")
    assert StreamSlots(per_owner=5, per_process=0).acquire("a") == (None, "process")


def test_anonymous_streams_count_per_client_address():
    assert owner_key("42", "10.0.0.1") == owner_key("42", "10.0.0.2")
    assert owner_key(None, "10.0.0.1") != owner_key(None, "10.0.0.2")
    assert owner_key(None, "10.0.0.1") != owner_key("10.0.0.1", "10.0.0.9")


def test_watch_client_ends_the_stream_when_the_peer_closed():
    closed = []

    def chunks() -> Iterator[str]:
        try:
            while True:
                yield "x"
        finally:
            closed.append(True)

    ours, theirs = socket.socketpair()
    stream = watch_client(chunks(), ours)
    assert [next(stream), next(stream)] == ["x", "x"]  # the client is there
    theirs.close()
    assert list(stream) == []  # seen gone at the next chunk
    assert closed == [True]  # and the inner stream was closed (its pub/sub freed)
    ours.close()


@pytest.mark.parametrize(
    "key, value",
    [
        ("JOBTASTIC_EVENTS_MAX_PER_OWNER", -1),
        ("JOBTASTIC_EVENTS_MAX_PER_OWNER", 2.5),
        ("JOBTASTIC_EVENTS_MAX_PER_OWNER", True),
        ("JOBTASTIC_EVENTS_MAX_PER_PROCESS", "16"),
        ("JOBTASTIC_EVENTS_MAX_PER_PROCESS", None),
    ],
)
def test_bad_bounds_are_refused_at_init_app(key, value):
    app = Flask("bounds")
    app.config[key] = value
    with pytest.raises(ConfigurationError, match=f"{key} must be an int >= 0"):
        Jobtastic(app)


def test_defaults_are_set_and_kept_below_the_readme_threads():
    app = Flask("bounds")
    Jobtastic(app)
    assert app.config["JOBTASTIC_EVENTS_MAX_PER_OWNER"] == defaults.EVENTS_MAX_PER_OWNER == 4
    assert app.config["JOBTASTIC_EVENTS_MAX_PER_PROCESS"] == defaults.EVENTS_MAX_PER_PROCESS
    assert defaults.EVENTS_MAX_PER_PROCESS <= 32 // 2  # half of --threads 32 stays free


# -- the endpoint, in process -------------------------------------------------------


@pytest.fixture
def bounded_app() -> Iterator[Flask]:
    app = create_app(
        owner_header="X-User",
        JOBTASTIC_EVENTS_MAX_PER_OWNER=1,
        JOBTASTIC_EVENTS_MAX_PER_PROCESS=2,
    )
    yield app
    close_app(app)


def _send(app: Flask, user: str, token: str, seconds: float = 3.0) -> str:
    with app.test_request_context(headers={"X-User": user}):
        return SlowProgressTask.delay_or_fail(token=token, seconds=seconds, steps=30).id


class HeldStream:
    """One open stream in a thread of its own, as each would have in a real server
    (the test client keeps a stream's request context pushed until it is closed)."""

    def __init__(self, app: Flask, task_id: str, user: str) -> None:
        self._opened = threading.Event()
        self._leave = threading.Event()
        self._left = threading.Event()
        self.status = 0
        self._thread = threading.Thread(target=self._run, args=(app, task_id, user), daemon=True)
        self._thread.start()
        assert self._opened.wait(10), "the stream never answered"

    def _run(self, app: Flask, task_id: str, user: str) -> None:
        response = app.test_client().get(
            f"/jobtastic/events/{task_id}", headers={"X-User": user}, buffered=False
        )
        self.status = response.status_code
        self._opened.set()
        self._leave.wait(30)
        response.close()
        self._left.set()

    def close(self) -> None:
        """The browser goes away; returns once the server closed the response."""
        self._leave.set()
        assert self._left.wait(10)
        self._thread.join(10)


@pytest.mark.usefixtures("celery_worker")
def test_streams_beyond_the_bounds_answer_429_and_free_their_slot(bounded_app, token):
    client = bounded_app.test_client()
    slots = bounded_app.extensions["jobtastic"].stream_slots
    alice, carol = {"X-User": "alice"}, {"X-User": "carol"}
    ids = {name: _send(bounded_app, name, token + name) for name in ("alice", "bob", "carol")}

    first = HeldStream(bounded_app, ids["alice"], "alice")
    assert first.status == 200
    refused = client.get(f"/jobtastic/events/{ids['alice']}", headers=alice)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "5"
    assert refused.headers["Cache-Control"] == "no-store"
    body = refused.get_json()
    assert body["task_id"] == ids["alice"]
    assert body["error"]["type"] == "TooManyStreams" and body["error"]["bound"] == "owner"
    assert "poll" in body["error"]["message"]

    second = HeldStream(bounded_app, ids["bob"], "bob")
    assert second.status == 200  # another user still gets one
    full = client.get(f"/jobtastic/events/{ids['carol']}", headers=carol)
    assert full.status_code == 429 and full.get_json()["error"]["bound"] == "process"
    # The ordinary status endpoint is not bounded: polling always works.
    assert client.get(f"/jobtastic/status/{ids['carol']}", headers=carol).status_code == 200

    assert slots.open_streams() == 2
    first.close()  # alice's browser went away
    assert slots.open_streams() == 1
    again = HeldStream(bounded_app, ids["carol"], "carol")
    assert again.status == 200
    again.close()
    second.close()
    assert slots.open_streams() == 0


@pytest.mark.usefixtures("celery_worker")
def test_refused_checks_come_after_the_usual_answers(bounded_app, token):
    """A malformed or unknown id is answered as before and takes no slot."""
    client = bounded_app.test_client()
    slots = bounded_app.extensions["jobtastic"].stream_slots
    assert client.get("/jobtastic/events/nope", headers={"X-User": "a"}).status_code == 400
    unknown = client.get(f"/jobtastic/events/{uuid.uuid4()}", headers={"X-User": "a"})
    assert unknown.status_code == 404
    job = _send(bounded_app, "alice", token)
    assert client.get(f"/jobtastic/events/{job}", headers={"X-User": "bob"}).status_code == 404
    assert slots.open_streams() == 0


# -- through a real gunicorn --------------------------------------------------------


def _open_stream(port: int, task_id: str, user: str) -> tuple[int, http.client.HTTPConnection, Any]:
    """``(status, connection, body)``: a 200 stays open (its body unread), else the JSON."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    connection.request("GET", f"/jobtastic/events/{task_id}", headers={"X-User": user})
    response = connection.getresponse()
    if response.status == 200:
        first = response.read1(64)  # the stream really runs: its retry hint arrives
        assert first.startswith(b"retry:"), first
        return 200, connection, dict(response.getheaders())
    body = json.loads(response.read())
    body["retry_after"] = response.getheader("Retry-After")
    connection.close()
    return response.status, connection, body


def _get(port: int, path: str, user: str, timeout: float = 10.0) -> tuple[int, float]:
    """``(status, seconds)`` of one GET on a fresh connection."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"X-User": user})
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        connection.close()


def _start(port: int, user: str, token: str, seconds: float) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        body = json.dumps({"token": token, "seconds": seconds, "steps": int(seconds * 10)})
        connection.request(
            "POST",
            "/start/slow",
            body=body,
            headers={"X-User": user, "Content-Type": "application/json"},
        )
        response = connection.getresponse()
        assert response.status == 200, response.read()
        return str(json.loads(response.read())["task_id"])
    finally:
        connection.close()


def _cancel(port: int, user: str, task_id: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        connection.request(
            "POST",
            f"/jobtastic/cancel/{task_id}",
            headers={"X-User": user, "X-Requested-With": "test"},
        )
        connection.getresponse().read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def gunicorn_defaults(celery_worker: Any) -> Iterator[GunicornServer]:
    """The default bounds; a 1 s heartbeat so a departed client is noticed quickly."""
    server = GunicornServer("streams", config={"JOBTASTIC_EVENTS_HEARTBEAT": 1.0})
    server.start()
    yield server
    server.stop()


def test_one_users_streams_leave_other_users_responsive(gunicorn_defaults, token):
    port = gunicorn_defaults.port
    mallory_job = _start(port, "mallory", token + "m", seconds=30)
    bob_job = _start(port, "bob", token + "b", seconds=30)
    jobs = [("mallory", mallory_job), ("bob", bob_job)]
    try:
        # 40 streams at once from one user: the owner bound lets 4 through.
        with ThreadPoolExecutor(max_workers=40) as pool:
            opened = list(pool.map(lambda _: _open_stream(port, mallory_job, "mallory"), range(40)))
        codes = sorted(code for code, _, _ in opened)
        assert codes == [200] * 4 + [429] * 36
        refused = [body for code, _, body in opened if code == 429]
        assert {body["error"]["bound"] for body in refused} == {"owner"}
        assert {body["retry_after"] for body in refused} == {"5"}

        # Three more users fill the process bound (16); a fifth user gets 429.
        held = [conn for code, conn, _ in opened if code == 200]
        for user in ("u1", "u2", "u3"):
            for _ in range(4):
                code, conn, _ = _open_stream(port, mallory_job, "mallory")
                assert code == 429  # still mallory's 4 at most
            job = _start(port, user, token + user, seconds=30)
            jobs.append((user, job))
            for _ in range(4):
                code, conn, _ = _open_stream(port, job, user)
                assert code == 200
                held.append(conn)
        code, _, body = _open_stream(port, bob_job, "bob")
        assert code == 429 and body["error"]["bound"] == "process"

        # Meanwhile bob's status requests answer at once (16 threads are free).
        timings = []
        for _ in range(30):
            status, seconds = _get(port, f"/jobtastic/status/{bob_job}", "bob")
            assert status == 200
            timings.append(seconds)
        assert max(timings) < 1.0, timings  # generous: "promptly"
        report = (
            f"16 streams held open (4 of them one user's; 36 + 13 refused with 429), "
            f"gunicorn -k gthread --threads 32 --workers 1: another user's status request "
            f"median {statistics.median(timings) * 1000:.1f} ms, max {max(timings) * 1000:.1f} ms"
        )
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

        # Mallory's browser leaves: her slots come back within a heartbeat or two.
        for conn in held[:4]:
            conn.close()
        left = time.monotonic()
        while True:
            code, conn, _ = _open_stream(port, mallory_job, "mallory")
            if code == 200:
                held.append(conn)
                break
            assert time.monotonic() < left + 10, "slots not freed after the client left"
            time.sleep(0.1)
        report += f"; a departed client's slot came back after {time.monotonic() - left:.1f} s"
        report += " (progress written every 0.1 s, heartbeat 1 s)"
        print("\n" + report)
        (ARTIFACTS / "streams-latency.txt").write_text(report + "\n")
        for conn in held:
            conn.close()
    finally:
        for user, job in jobs:
            _cancel(port, user, job)


def test_without_the_bounds_one_users_streams_stall_everyone(celery_worker, token):
    """What the bounds prevent: 32 streams of one user take every thread of the process."""
    unbounded = {"JOBTASTIC_EVENTS_MAX_PER_OWNER": 1000, "JOBTASTIC_EVENTS_MAX_PER_PROCESS": 1000}
    server = GunicornServer("streams-unbounded", config=unbounded).start()
    held = []
    job = _start(server.port, "mallory", token, seconds=30)
    try:
        for _ in range(32):
            code, conn, _ = _open_stream(server.port, job, "mallory")
            assert code == 200
            held.append(conn)
        with pytest.raises((TimeoutError, socket.timeout)):
            _get(server.port, f"/jobtastic/status/{job}", "bob", timeout=3.0)
    finally:
        for conn in held:
            conn.close()
        _cancel(server.port, "mallory", job)
        server.stop()
