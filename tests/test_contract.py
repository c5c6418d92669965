"""The contract (openapi.json) is true of the live app.

1. Real documents of real jobs on the suite's worker (queued, running with
   steps and counts, done, failed, cancelled, lost, retrying, unknown,
   malformed, refused, unavailable) validate against the response the
   contract documents for their path, method, status code and media type.
2. schemathesis generates requests for every operation of the served
   contract (valid and invalid ones, a fixed number per operation, a fixed
   seed) against the app in-process over WSGI, on the real Redis: no 5xx,
   and every response conforms to the schema of its status code.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jsonschema_rs
import pytest
import redis
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

from flask_jobtastic import contract, side_records
from flask_jobtastic.events import _unavailable_event
from tests.app_factory import close_app, create_app
from tests.servers import free_port
from tests.tasks import (
    CancellableTask,
    CountingTask,
    FailingTask,
    RetryLaterTask,
    SlowProgressTask,
    StepErrorTask,
    StepsTask,
    TrackedTask,
)
from tests.test_events import parse

pytestmark = pytest.mark.usefixtures("celery_worker")

CONTRACT = contract.load_contract()
PREFIX = "/jobtastic"
ALICE = {"X-User": "alice"}
BOB = {"X-User": "bob"}
POSTING = {**ALICE, "X-Requested-With": "XMLHttpRequest"}
#: Keys the library's own jobs put in a status document: the documented ones.
DOCUMENTED = set(CONTRACT["components"]["schemas"]["StatusDocument"]["properties"])


# -- checking a response against the contract ----------------------------------------


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = CONTRACT
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


_VALIDATORS: dict[str, jsonschema_rs.Validator] = {}


def _validator(schema: dict[str, Any]) -> jsonschema_rs.Validator:
    key = json.dumps(schema, sort_keys=True)
    if key not in _VALIDATORS:
        root = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "allOf": [schema],
            "components": CONTRACT["components"],
        }
        _VALIDATORS[key] = jsonschema_rs.validator_for(root, validate_formats=True)
    return _VALIDATORS[key]


def documented_schema(method: str, path: str, status: int, mimetype: str) -> dict[str, Any]:
    """The schema the contract documents for this answer; fails if it documents none."""
    operation = CONTRACT["paths"][path][method.lower()]
    assert str(status) in operation["responses"], (method, path, status)
    content = _resolve(operation["responses"][str(status)]).get("content", {})
    assert mimetype in content, (method, path, status, mimetype, list(content))
    return content[mimetype]["schema"]


def checked(response: Any, method: str, path: str) -> Any:
    """The response's JSON, once it validates against what the contract documents."""
    schema = documented_schema(method, path, response.status_code, response.mimetype)
    document = response.get_json()
    errors = [str(error) for error in _validator(schema).iter_errors(document)]
    assert not errors, (method, path, response.status_code, document, errors)
    for status in _status_documents(document):
        assert set(status) <= DOCUMENTED, set(status) - DOCUMENTED  # nothing undocumented
    return document


def _status_documents(document: Any) -> list[dict[str, Any]]:
    if not isinstance(document, dict):
        return []
    if "tasks" in document:
        return list(document["tasks"].values())
    return [document] if "task_id" in document and "state" in document else []


def checked_events(response: Any, path: str = "/events/{task_id}") -> list[Any]:
    """Every event's data, each validated against the contract's event schemas."""
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    schema = documented_schema("GET", path, 200, "text/event-stream")
    events = [(name, data) for name, data in parse(response.response) if name != "retry"]
    response.close()
    out = []
    for name, data in events:
        if name == "comment":
            continue
        event = {"event": name, "data": json.dumps(data)}
        _check_event(schema, event)
        out.append((name, data))
    return out


def _check_event(schema: dict[str, Any], event: dict[str, Any]) -> None:
    """An SSE event against the oneOf of event schemas, the data against its contentSchema."""
    for option in schema["oneOf"]:
        described = _resolve(option)
        if described["properties"]["event"]["const"] != event["event"]:
            continue
        content = described["properties"]["data"]["contentSchema"]
        data = json.loads(event["data"])
        errors = [str(error) for error in _validator(content).iter_errors(data)]
        assert not errors, (event, errors)
        return
    raise AssertionError(f"event {event['event']!r} is not in the contract")


# -- real documents of real jobs ---------------------------------------------------------


@pytest.fixture
def app() -> Iterator[Flask]:
    """The README's app with owners (``X-User``) and the Redis job registry.

    Built at the start of each test, the last built before its jobs are sent:
    class-level sends go through the app bound last (see conftest's ``app``).
    """
    built = create_app(owner_header="X-User")
    yield built
    close_app(built)


def send(app: Flask, task: Any, headers: dict[str, str] = ALICE, **kwargs: Any) -> str:
    with app.test_request_context(headers=headers):
        return str(task.delay_or_fail(**kwargs).id)


def watch(
    client: Any,
    task_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    headers: dict[str, str] = ALICE,
    timeout: float = 20.0,
) -> dict[str, Any]:
    """Poll the status until ``predicate``; every answer on the way is checked too."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"{PREFIX}/status/{task_id}", headers=headers)
        document: dict[str, Any] = checked(response, "GET", "/status/{task_id}")
        if predicate(document):
            return document
        assert time.monotonic() < deadline, document
        time.sleep(0.05)


def cancel(client: Any, task_id: str, headers: dict[str, str] = POSTING) -> Any:
    return client.post(f"{PREFIX}/cancel/{task_id}", headers=headers)


def test_queued_then_cancelled_and_the_batch_of_them(app, token):
    client = app.test_client()
    with app.test_request_context(headers=ALICE):
        queued = CancellableTask.apply_async(kwargs={"token": token, "steps": 2}, countdown=3).id
    pending = watch(client, queued, lambda d: True)
    assert pending["state"] == "PENDING" and "queued_at" in pending
    unknown = str(uuid.uuid4())
    for response in (
        client.get(f"{PREFIX}/status?ids={queued},{unknown}", headers=ALICE),
        client.post(f"{PREFIX}/status", json={"task_ids": [queued, unknown]}, headers=ALICE),
    ):
        tasks = checked(response, response.request.method, "/status")["tasks"]
        assert tasks[queued]["state"] == "PENDING" and tasks[unknown]["state"] == "UNKNOWN"
    refused = cancel(client, queued, headers=ALICE)  # no X-Requested-With
    assert checked(refused, "POST", "/cancel/{task_id}")["error"]["type"] == "BadRequest"
    answer = checked(cancel(client, queued), "POST", "/cancel/{task_id}")
    assert answer["state"] in ("PENDING", "REVOKED")
    watch(client, queued, lambda d: d["state"] == "REVOKED")


def test_progress_with_a_rate_then_success_over_status_and_events(app, token):
    client = app.test_client()
    task_id = send(app, SlowProgressTask, token=token, seconds=1.5, steps=15)
    running = watch(
        client, task_id, lambda d: d["state"] == "PROGRESS" and d.get("rate") is not None
    )
    assert {"completed", "total"} <= set(running)
    streamed = checked_events(client.get(f"{PREFIX}/events/{task_id}", headers=ALICE))
    assert streamed[-1][1]["state"] == "SUCCESS"
    done = watch(client, task_id, lambda d: d["ready"])
    assert done["state"] == "SUCCESS" and done["result"] == token
    again = checked_events(client.get(f"{PREFIX}/events/{task_id}", headers=ALICE))
    assert [name for name, _ in again] == ["status"]


def test_steps_messages_and_counts_while_running_and_kept_after(app, token):
    client = app.test_client()
    steps_id = send(app, StepsTask, token=token)
    counts_id = send(app, CountingTask, token=token, items=12, bad=[3])
    watch(client, steps_id, lambda d: any(s["state"] == "failed" for s in d.get("steps", [])))
    watch(client, counts_id, lambda d: d.get("counts", {}).get("failure") == 1)
    done = watch(client, steps_id, lambda d: d["ready"])
    assert done["state"] == "SUCCESS" and done["steps"] and done["messages"]
    counted = watch(client, counts_id, lambda d: d["ready"])
    assert counted["counts"]["pending"] == 0


def test_failures_generic_user_facing_and_of_a_step(app, token):
    client = app.test_client()
    generic = send(app, FailingTask, token=token)
    user_facing = send(app, FailingTask, token=token + "u", user_facing=True)
    step = send(app, StepErrorTask, token=token, how="raise")
    for task_id in (generic, user_facing, step):
        failed = watch(client, task_id, lambda d: d["ready"])
        assert failed["state"] == "FAILURE" and failed["error"]["error_id"]


def test_a_retrying_job(app, token):
    client = app.test_client()
    task_id = send(app, RetryLaterTask, token=token, countdown=3.0)
    watch(client, task_id, lambda d: d["state"] == "RETRY")


def test_a_running_job_cancelled_then_a_lost_one(app, token):
    client = app.test_client()
    stopped = send(app, CancellableTask, token=token, steps=60, pause=0.1)
    watch(client, stopped, lambda d: d["state"] == "PROGRESS" and d["progress_percent"] > 0)
    answer = checked(cancel(client, stopped), "POST", "/cancel/{task_id}")
    assert answer.get("cancel_pending") is True or answer["state"] == "REVOKED"
    watch(client, stopped, lambda d: d["state"] == "REVOKED")
    lost = send(app, CancellableTask, token=token + "lost", steps=60, pause=0.1)
    watch(client, lost, lambda d: d["state"] == "PROGRESS" and d["progress_percent"] > 0)
    marker = redis.Redis.from_url(os.environ["JOBTASTIC_TEST_BACKEND_URL"])
    for _ in range(3):  # the heartbeat may renew the marker between the two calls
        marker.delete(side_records.side_key("run", lost))
        response = client.get(f"{PREFIX}/status/{lost}", headers=ALICE)
        document = checked(response, "GET", "/status/{task_id}")
        if document["state"] == "FAILURE":
            break
    assert document["error"]["type"] == "WorkerLost", document


def test_unknown_not_yours_and_malformed(app, token):
    client = app.test_client()
    mine = send(app, SlowProgressTask, token=token, seconds=0.2, steps=2)
    watch(client, mine, lambda d: d["ready"])
    for task_id, headers in ((str(uuid.uuid4()), ALICE), (mine, BOB)):
        posting = {**headers, "X-Requested-With": "XMLHttpRequest"}
        for method, path, sent in (
            ("GET", "/status/{task_id}", headers),
            ("GET", "/events/{task_id}", headers),
            ("POST", "/cancel/{task_id}", posting),
            ("POST", "/jobs/{task_id}/seen", posting),
        ):
            url = PREFIX + path.format(task_id=task_id)
            response = client.open(url, method=method, headers=sent)
            assert response.status_code == 404, (url, response.data)
            assert checked(response, method, path)["state"] == "UNKNOWN"
            bad = client.open(
                PREFIX + path.format(task_id="not-a-uuid"), method=method, headers=sent
            )
            assert checked(bad, method, path)["error"]["type"] == "BadRequest"


def test_batches_refused(app):
    client = app.test_client()
    too_many = ",".join(str(uuid.uuid4()) for _ in range(101))
    for response in (
        client.get(f"{PREFIX}/status?ids=a,{uuid.uuid4()}"),
        client.get(f"{PREFIX}/status?ids={too_many}"),
        client.get(f"{PREFIX}/status"),
        client.post(f"{PREFIX}/status", json={"ids": []}),
        client.post(f"{PREFIX}/status", data="[1", content_type="application/json"),
    ):
        refused = checked(response, response.request.method, "/status")
        assert response.status_code == 400 and refused["error"]["type"] == "BadRequest"


def test_jobs_and_marking_one_seen(app, token):
    client = app.test_client()
    task_id = send(app, TrackedTask, token=token, seconds=1.0)
    send(app, TrackedTask, token=token + "f", seconds=0.1, fail=True)
    jobs = checked(client.get(f"{PREFIX}/jobs", headers=ALICE), "GET", "/jobs")["jobs"]
    assert task_id in [job["id"] for job in jobs]
    early = client.post(f"{PREFIX}/jobs/{task_id}/seen", headers=POSTING)
    if early.status_code == 409:  # not finished yet, as it should be
        checked(early, "POST", "/jobs/{task_id}/seen")
    watch(client, task_id, lambda d: d["ready"])
    seen = client.post(f"{PREFIX}/jobs/{task_id}/seen", headers=POSTING)
    assert checked(seen, "POST", "/jobs/{task_id}/seen")["seen"] is True
    for query in ("?all=1", "?state=succeeded&state=failed", "?state=queued&all=yes"):
        checked(client.get(f"{PREFIX}/jobs{query}", headers=ALICE), "GET", "/jobs")
    bogus = client.get(f"{PREFIX}/jobs?state=bogus", headers=ALICE)
    assert checked(bogus, "GET", "/jobs")["error"]["type"] == "BadRequest"
    anonymous = checked(client.get(f"{PREFIX}/jobs"), "GET", "/jobs")
    assert anonymous == {"jobs": []}
    html = client.get(f"{PREFIX}/jobs.html", headers=ALICE)
    assert html.status_code == 200
    documented_schema("GET", "/jobs.html", 200, html.mimetype)


def test_registry_off_streams_refused_static_and_the_contract(token):
    sender = create_app(owner_header="X-User")
    try:
        done = send(sender, SlowProgressTask, token=token, seconds=0.1, steps=1)
        watch(sender.test_client(), done, lambda d: d["ready"])
    finally:
        close_app(sender)
    off = create_app(
        owner_header="X-User", JOBTASTIC_REGISTRY=None, JOBTASTIC_EVENTS_MAX_PER_OWNER=0
    )
    try:
        client = off.test_client()
        for method, path in (
            ("GET", "/jobs"),
            ("GET", "/jobs.html"),
            ("POST", f"/jobs/{done}/seen"),
        ):
            response = client.open(PREFIX + path, method=method, headers=POSTING)
            template = path.replace(done, "{task_id}")
            assert checked(response, method, template)["error"]["type"] == "NotFound"
        refused = client.get(f"{PREFIX}/events/{done}", headers=ALICE)
        assert refused.status_code == 429 and refused.headers["Retry-After"]
        assert checked(refused, "GET", "/events/{task_id}")["error"]["bound"] == "owner"
        for name in ("jobtastic.js", "jobtastic.css", "missing.txt"):
            response = client.get(f"{PREFIX}/static/{name}")
            documented_schema("GET", "/static/{filename}", response.status_code, response.mimetype)
            response.close()
        checked(client.get(f"{PREFIX}/openapi.json"), "GET", "/openapi.json")
    finally:
        close_app(off)


def test_a_silent_result_backend_answers_503_everywhere(token):
    dead = f"redis://127.0.0.1:{free_port()}/1"
    down = create_app(
        servers={**os.environ, "JOBTASTIC_TEST_BACKEND_URL": dead}, owner_header="X-User"
    )
    try:
        client = down.test_client()
        task_id = str(uuid.uuid4())
        for method, path, url in (
            ("GET", "/status/{task_id}", f"/status/{task_id}"),
            ("GET", "/status", f"/status?ids={task_id}"),
            ("POST", "/status", "/status"),
            ("GET", "/events/{task_id}", f"/events/{task_id}"),
            ("POST", "/cancel/{task_id}", f"/cancel/{task_id}"),
            ("GET", "/jobs", "/jobs"),
            ("GET", "/jobs.html", "/jobs.html"),
            ("POST", "/jobs/{task_id}/seen", f"/jobs/{task_id}/seen"),
        ):
            body = {"task_ids": [task_id]} if path == "/status" else None
            response = client.open(PREFIX + url, method=method, headers=POSTING, json=body)
            assert response.status_code == 503, (url, response.data)
            assert response.headers["Retry-After"]
            assert checked(response, method, path)["error"]["type"] == "ResultBackendUnavailable"
    finally:
        close_app(down)


def test_the_event_that_ends_a_stream_on_an_outage():
    task_id = str(uuid.uuid4())
    ((name, data),) = list(parse([_unavailable_event(task_id)]))
    schema = documented_schema("GET", "/events/{task_id}", 200, "text/event-stream")
    _check_event(schema, {"event": name, "data": json.dumps(data)})


# -- schemathesis against the live app -------------------------------------------------

#: Examples per operation and generation mode (valid, then invalid requests).
MAX_EXAMPLES = 25
#: A prefix of its own: the served contract must name it for any request to land.
FUZZ_PREFIX = "/api/jobtastic"
FUZZER = {"X-User": "fuzzer"}
CHECKS = [not_a_server_error, response_schema_conformance]


@dataclass
class Tally:
    """What schemathesis sent and what it found."""

    examples: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    unsatisfiable: list[str] = field(default_factory=list)


class _BufferedClient(FlaskClient):
    """Reads each answer whole and closes it: schemathesis' WSGI transport leaves a
    file-backed one (a static asset) open, a ResourceWarning at collection."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


POSITIVE = schemathesis.GenerationMode.POSITIVE
NEGATIVE = schemathesis.GenerationMode.NEGATIVE


def _fuzz(operation: Any, tally: Tally, client: FlaskClient, kind: str, **given_: Any) -> None:
    """``MAX_EXAMPLES`` generated requests to one operation, each answer checked.

    ``kind`` is ``positive`` or ``negative`` (schemathesis' generation mode),
    or ``known id``: valid requests about a job that exists.
    """
    mode = NEGATIVE if kind == "negative" else POSITIVE
    label = f"{operation.label} [{kind}]"

    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,  # a fixed seed: the same requests on every run
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # failures are collected, never shrunk
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, **given_))
    def run(case: schemathesis.Case) -> None:
        response = case.call(headers=FUZZER, session=client)
        tally.examples[label] += 1
        tally.statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=FUZZER)
        except (Failure, FailureGroup) as exc:
            tally.failures.append(f"{label}: {exc}")

    try:
        run()
    except Unsatisfiable:  # nothing of the request can be made invalid
        assert mode == NEGATIVE, label
        tally.unsatisfiable.append(label)


@pytest.fixture
def fuzzed_app(token: str) -> Iterator[tuple[Flask, str]]:
    """The app under a prefix of its own, and a done job of the fuzzer's (another runs on)."""
    # streams end soon, so a fuzzed request to a live stream ends too
    built = create_app(
        owner_header="X-User", JOBTASTIC_URL_PREFIX=FUZZ_PREFIX, JOBTASTIC_EVENTS_MAX_SECONDS=0.3
    )
    try:
        client = built.test_client()
        done = send(built, TrackedTask, FUZZER, token=token, seconds=0.1)
        send(built, TrackedTask, FUZZER, token=token + "r", seconds=3.0)
        deadline = time.monotonic() + 20
        while not client.get(f"{FUZZ_PREFIX}/status/{done}", headers=FUZZER).get_json()["ready"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield built, done
    finally:
        close_app(built)


def test_schemathesis_finds_no_server_error_and_no_schema_violation(fuzzed_app):
    app, done = fuzzed_app
    schema = schemathesis.openapi.from_wsgi(f"{FUZZ_PREFIX}/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    described = {
        f"{verb.upper()} {path}" for path, item in CONTRACT["paths"].items() for verb in item
    }
    # all but the one it was loaded from, which test_registry_off_... checks
    assert {operation.label for operation in operations} == described - {"GET /openapi.json"}
    tally = Tally()
    client = _BufferedClient(app, app.response_class)
    for operation in operations:
        _fuzz(operation, tally, client, "positive")
        _fuzz(operation, tally, client, "negative")
        if "{task_id}" in operation.path:
            _fuzz(operation, tally, client, "known id", path_parameters={"task_id": done})
    print(f"\nschemathesis: {len(operations)} operations, {sum(tally.examples.values())} examples")
    print(f"by status: {dict(sorted(tally.statuses.items()))}")
    assert not tally.failures, "\n\n".join(tally.failures[:5])
    assert tally.unsatisfiable == ["GET /jobs.html [negative]"]  # it takes no input at all
    assert {200, 400, 404} <= set(tally.statuses)
    assert len(tally.examples) == 2 * len(operations) - 1 + 4  # and 4 about a known id


def test_a_canvas_and_the_page_of_its_parts(app, token):
    from celery import group

    from flask_jobtastic import canvas_or_fail
    from tests.canvas_tasks import RowsPart

    client = app.test_client()
    with app.test_request_context(headers=ALICE):
        parts = [RowsPart.s(token=token, rows=20, part=i, pause=0.02) for i in range(3)]
        canvas_id = canvas_or_fail(group(parts)).id
    running = watch(client, canvas_id, lambda d: d["state"] == "PROGRESS")
    assert running["children"]["total"] == 3
    done = watch(client, canvas_id, lambda d: d["ready"])
    assert done["children"]["succeeded"] == 3
    page = client.get(f"{PREFIX}/status/{canvas_id}?children=1&page=1", headers=ALICE)
    assert len(checked(page, "GET", "/status/{task_id}")["parts"]) == 3
    beyond = client.get(f"{PREFIX}/status/{canvas_id}?children=1&page=2", headers=ALICE)
    assert checked(beyond, "GET", "/status/{task_id}")["error"]["type"] == "BadRequest"
