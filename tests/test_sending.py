"""Sending, step by step, without a worker: Celery's in-memory broker and
result backend and flask-caching's SimpleCache stand where Redis and
memcached stand in production (the full path on those runs in test_task.py
and test_outages.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery.signals import before_task_publish
from flask import Flask, request

from flask_jobtastic import BrokerUnavailable, Jobtastic, JobtasticTask, keys, signals, states
from flask_jobtastic.sending import (
    Call,
    answer_from_cache,
    bind_call,
    claim_or_join,
    dispatch,
    job_record,
    message_headers,
    unsendable,
)
from flask_jobtastic.state import JobtasticState


class SendingSumTask(JobtasticTask):
    significant_kwargs = ["a", "b"]
    herd_avoidance_timeout = 30
    cache_duration = 60

    def calculate_result(self, a: int, b: int, note: str = "") -> int:
        return a + b


class SendingSharedTask(JobtasticTask):
    significant_kwargs = ["a"]
    herd_avoidance_timeout = 30
    share_across_owners = True

    def calculate_result(self, a: int) -> int:
        return a


def in_memory_app(broker_url: str = "memory://", **config: Any) -> Flask:
    app = Flask("sending")
    app.config.update(
        CELERY={"broker_url": broker_url, "result_backend": "cache+memory://"},
        JOBTASTIC_CACHE={"CACHE_TYPE": "SimpleCache"},
        JOBTASTIC_EMBEDDED_WORKER=False,
        JOBTASTIC_REGISTRY="memory",
        **config,
    )
    extension = Jobtastic(app)
    extension.owner_loader(lambda: request.headers.get("X-User"))
    return app


@pytest.fixture
def app() -> Iterator[Flask]:
    app = in_memory_app()
    yield app
    app.extensions["jobtastic"].celery.close()


@pytest.fixture
def state(app: Flask) -> JobtasticState:
    return app.extensions["jobtastic"]


@pytest.fixture
def published() -> Iterator[list[dict[str, Any]]]:
    """The headers of every message published while the test runs."""
    seen: list[dict[str, Any]] = []

    def record(headers: dict[str, Any] | None = None, **_: Any) -> None:
        seen.append(dict(headers or {}))

    before_task_publish.connect(record, weak=False)
    yield seen
    before_task_publish.disconnect(record)


def a_call(app: Flask, task_cls: type[JobtasticTask], user: str | None = "alice", **kwargs: Any):
    options = kwargs.pop("options", {})
    headers = {"X-User": user} if user else {}
    with app.test_request_context(headers=headers):
        state = app.extensions["jobtastic"]
        task = state.celery.tasks[task_cls.name]
        return bind_call(task, state, (), kwargs, dict(options), "fail")


def test_a_call_is_bound_to_owner_scoped_keys_and_a_fresh_id(app: Flask) -> None:
    alice = a_call(app, SendingSumTask, a=1, b=2, note="ignored")
    bob = a_call(app, SendingSumTask, user="bob", a=1, b=2)
    assert alice.owner == "alice"
    assert alice.cache_key != bob.cache_key  # one user's result is not another's
    assert alice.herd_key == keys.herd_key(alice.cache_key)
    assert alice.task_id != bob.task_id
    uuid.UUID(alice.task_id)
    again = a_call(app, SendingSumTask, a=1, b=2, note="other")
    assert again.cache_key == alice.cache_key  # only significant arguments count


def test_shared_results_use_one_key_for_every_owner(app: Flask) -> None:
    alice = a_call(app, SendingSharedTask, a=1)
    bob = a_call(app, SendingSharedTask, user="bob", a=1)
    assert alice.cache_key == bob.cache_key


def test_call_options_are_taken_out_of_celery_options(app: Flask) -> None:
    call = a_call(
        app,
        SendingSumTask,
        a=1,
        b=2,
        options={"herd_avoidance": False, "task_id": "my-id", "countdown": 3},
    )
    assert call.herd_key is None
    assert call.cache_key is not None  # still needed for the result cache
    assert call.task_id == "my-id"
    assert call.options == {"countdown": 3}


def test_a_call_that_does_not_fit_calculate_result_is_refused_naming_it(app: Flask) -> None:
    with pytest.raises(TypeError, match="SendingSumTask"):
        a_call(app, SendingSumTask, a=1, c=2)


def test_a_cached_id_answers_without_a_claim_and_says_so(app: Flask, state) -> None:
    call = a_call(app, SendingSumTask, a=1, b=2)
    assert answer_from_cache(call) is None
    state.cache_backend.set(keys.result_key(call.cache_key), "earlier-id")
    hits: list[str] = []
    with signals.cache_hit.connected_to(lambda sender, task_id: hits.append(task_id)):
        result = answer_from_cache(call)
    assert result is not None and result.id == "earlier-id"
    assert hits == ["earlier-id"]
    assert state.cache_backend.get(call.herd_key) is None  # nothing was claimed


def test_the_first_call_claims_and_an_identical_one_joins_it(app: Flask, state) -> None:
    first = a_call(app, SendingSumTask, a=5, b=5)
    assert claim_or_join(first) is None  # claimed: the caller sends
    assert state.cache_backend.get(first.herd_key) == first.task_id
    joined: list[str] = []
    with signals.herd_joined.connected_to(lambda sender, task_id: joined.append(task_id)):
        second = claim_or_join(a_call(app, SendingSumTask, a=5, b=5))
    assert second is not None and second.id == first.task_id
    assert joined == [first.task_id]


def test_a_claim_held_by_a_failed_run_is_taken_over(app: Flask, state) -> None:
    first = a_call(app, SendingSumTask, a=6, b=6)
    assert claim_or_join(first) is None
    first.task.backend.mark_as_failure(first.task_id, RuntimeError("boom"))
    second = a_call(app, SendingSumTask, a=6, b=6)
    assert claim_or_join(second) is None  # a new run, not the failed one
    assert state.cache_backend.get(second.herd_key) == second.task_id


def test_who_may_read_a_job_is_recorded_only_where_it_matters(app: Flask) -> None:
    owned = a_call(app, SendingSumTask, a=1, b=2)
    assert job_record(owned) == {
        "owner": "alice",
        "shared": False,
        "herd_key": owned.herd_key,
        "name": SendingSumTask.name,
    }
    anonymous = a_call(app, SendingSumTask, user=None, a=1, b=2, options={"herd_avoidance": False})
    # owners are checked in this app: a job without a record would be nobody's
    assert job_record(anonymous) is not None


def test_an_app_without_owners_sends_plain_jobs_without_a_record() -> None:
    app = Flask("plain")
    app.config.update(
        CELERY={"broker_url": "memory://", "result_backend": "cache+memory://"},
        JOBTASTIC_CACHE={"CACHE_TYPE": "SimpleCache"},
        JOBTASTIC_EMBEDDED_WORKER=False,
    )
    Jobtastic(app)
    try:
        call = a_call(app, SendingSumTask, user=None, a=1, b=2, options={"herd_avoidance": False})
        assert job_record(call) is None
    finally:
        app.extensions["jobtastic"].celery.close()


def test_the_headers_tell_the_worker_its_keys(app: Flask) -> None:
    call = a_call(app, SendingSumTask, a=1, b=2, options={"track_state": True})
    headers = message_headers(call, has_record=True)
    assert headers["jobtastic_key"] == call.cache_key
    assert headers["jobtastic_record"] is True
    assert headers["jobtastic_track"] is True  # tracked by this call only
    assert "jobtastic_herd" not in headers
    plain = a_call(app, SendingSumTask, a=1, b=2, options={"herd_avoidance": False})
    assert message_headers(plain, has_record=False)["jobtastic_herd"] is False


def test_dispatch_records_the_job_queued_then_publishes_it(app: Flask, state, published) -> None:
    sent: list[str] = []
    with (
        signals.job_sent.connected_to(lambda sender, task_id: sent.append(task_id)),
        app.test_request_context(headers={"X-User": "alice"}),
    ):
        task = state.celery.tasks[SendingSumTask.name]
        result = dispatch(task, (), {"a": 7, "b": 8}, {"track_state": True}, "fail")
    assert sent == [result.id]
    assert published and published[-1]["id"] == result.id
    assert published[-1]["jobtastic_track"] is True
    meta = task.backend.get_task_meta(result.id)
    assert meta["status"] == states.PENDING
    record = state.registry.get(result.id)
    assert record is not None and record.state == "queued" and record.owner == "alice"


def test_a_dead_broker_gives_a_failed_result_and_frees_the_claim(published) -> None:
    app = in_memory_app(broker_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    state = app.extensions["jobtastic"]
    outages: list[Any] = []

    def record(sender: Any, task_id: str, error: Exception) -> None:
        outages.append((task_id, error))

    try:
        with (
            signals.broker_unavailable.connected_to(record),
            app.test_request_context(headers={"X-User": "alice"}),
        ):
            task = state.celery.tasks[SendingSumTask.name]
            result = dispatch(task, (), {"a": 1, "b": 1}, {"track_state": True}, "fail")
            call = bind_call(task, state, (), {"a": 1, "b": 1}, {}, "fail")
    finally:
        state.celery.close()
    assert result.state == states.FAILURE
    assert isinstance(result.result, BrokerUnavailable)
    assert [task_id for task_id, _ in outages] == [result.id]
    assert state.cache_backend.get(call.herd_key) is None  # the next call may try again
    assert state.registry.get(result.id).state == "failed"


def test_arguments_json_cannot_carry_are_named() -> None:
    assert unsendable((1, object()), {}) == "positional argument 1 (object)"
    assert unsendable((), {"when": {1, 2}}) == "argument 'when' (set)"
    assert unsendable((1,), {"a": "b"}) == "arguments"


def test_a_call_is_frozen(app: Flask) -> None:
    call: Call = a_call(app, SendingSumTask, a=1, b=2)
    with pytest.raises(AttributeError):
        call.task_id = "other"  # type: ignore[misc]
