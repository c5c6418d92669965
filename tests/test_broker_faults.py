"""A real broker killed under the app: fallbacks answer fast and clearly.

On a RabbitMQ broker, and on a Redis broker apart from the result backend's
Redis (with the quick start's one Redis, killing the broker kills the backend
too: that outage has tests of its own).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from flask import Flask

from tests.app_factory import close_app, create_app
from tests.rig import Servers
from tests.servers import RabbitMQServer, RedisServer
from tests.tasks import CountedTask, DivisionTask, TrackedTask


@pytest.fixture(params=["rabbitmq", "separate-redis"])
def servers(request: pytest.FixtureRequest, make_servers: Callable[..., Servers]) -> Servers:
    return make_servers(request.param)


@pytest.fixture
def broker(servers: Servers) -> RedisServer | RabbitMQServer:
    assert servers.broker is not None and servers.broker is not servers.redis
    return servers.broker


@pytest.fixture
def fragile_app(servers: Servers) -> Iterator[Flask]:
    """An app whose broker is a server of its own; results on a Redis that stays up."""
    app = create_app(servers=servers.env())
    yield app
    close_app(app)


def test_delay_or_fail_with_killed_broker_fails_fast_and_says_why(fragile_app, broker, token):
    with fragile_app.app_context():
        # one good send first, so the producer pool holds a live connection
        CountedTask.delay_or_fail(token=uuid.uuid4().hex, value=0, seconds=0)
        broker.kill()
        started = time.monotonic()
        result = CountedTask.delay_or_fail(token=token, value=1)
        elapsed = time.monotonic() - started
    assert elapsed < 1.0, elapsed
    assert result.state == "FAILURE"
    response = fragile_app.test_client().get(f"/jobtastic/status/{result.id}")
    document = response.get_json()
    assert response.status_code == 200
    assert document["state"] == "FAILURE" and document["ready"] is True
    assert document["error"]["type"] == "BrokerUnavailable"
    assert "could not be queued" in document["error"]["message"]


def test_delay_or_fail_releases_the_herd_key(fragile_app, broker, token):
    broker.kill()
    with fragile_app.app_context():
        first = CountedTask.delay_or_fail(token=token, value=1)
        second = CountedTask.delay_or_fail(token=token, value=1)
    assert first.id != second.id  # the failed attempt did not block the next one


def test_delay_or_eager_with_killed_broker_computes_in_process(fragile_app, broker, token):
    broker.kill()
    with fragile_app.app_context():
        started = time.monotonic()
        result = DivisionTask.delay_or_eager(numerators=[1, 9], denominators=[2, 3], token=token)
        elapsed = time.monotonic() - started
    assert elapsed < 1.0, elapsed
    assert result.state == "SUCCESS"
    assert result.get() == [0.5, 3.0]
    # the eager result is stored, so the page polling the id sees it
    document = fragile_app.test_client().get(f"/jobtastic/status/{result.id}").get_json()
    assert document["state"] == "SUCCESS" and document["result"] == [0.5, 3.0]


def test_plain_delay_raises_the_broker_error(fragile_app, broker, token):
    from kombu.exceptions import OperationalError

    broker.kill()
    with fragile_app.app_context(), pytest.raises((OperationalError, ConnectionError)):
        CountedTask.delay(token=token, value=1)


@pytest.fixture
def tracked_app(servers: Servers) -> Iterator[Flask]:
    """Like ``fragile_app``, with users (``X-User``); the job registry is on the backend."""
    app = create_app(servers=servers.env(), owner_header="X-User")
    yield app
    close_app(app)


@pytest.mark.parametrize("send", ["delay_or_fail", "delay"])
def test_job_that_could_not_be_queued_is_listed_failed_and_can_be_dismissed(
    tracked_app, broker, token, send
):
    from kombu.exceptions import OperationalError

    user = {"X-User": token}  # a user of this test alone
    broker.kill()
    with tracked_app.test_request_context(headers=user):
        if send == "delay":  # raises, and still leaves no "queued" record behind
            with pytest.raises((OperationalError, ConnectionError)):
                TrackedTask.delay(token=token)
            registry = tracked_app.extensions["jobtastic"].registry
            (record,) = registry.jobs_of(token)
            task_id = record.id
        else:
            task_id = TrackedTask.delay_or_fail(token=token).id
    client = tracked_app.test_client()
    (job,) = client.get("/jobtastic/jobs", headers=user).get_json()["jobs"]
    assert job["id"] == task_id and job["state"] == "failed" and job["finished"] is True
    seen = client.post(
        f"/jobtastic/jobs/{task_id}/seen", headers={**user, "X-Requested-With": "fetch"}
    )
    assert seen.status_code == 200 and seen.get_json()["seen"] is True


def test_registry_store_down_is_logged_not_fatal(servers, broker, token, caplog):
    with RedisServer() as registry_redis:
        app = create_app(
            servers=servers.env(), JOBTASTIC_REGISTRY=registry_redis.url, owner_header="X-User"
        )
        try:
            registry_redis.kill()
            broker.kill()
            with app.test_request_context(headers={"X-User": token}):
                started = time.monotonic()
                result = TrackedTask.delay_or_fail(token=token)
                elapsed = time.monotonic() - started
            assert result.state == "FAILURE" and elapsed < 1.0, elapsed
            logged = [r.getMessage() for r in caplog.records if r.name == "flask_jobtastic"]
            assert "Job registry record_sent failed" in logged
            response = app.test_client().get("/jobtastic/jobs.html", headers={"X-User": token})
            assert response.status_code == 503 and response.is_json
            assert response.get_json()["error"]["type"] == "ResultBackendUnavailable"
            assert response.headers["Retry-After"]
        finally:
            close_app(app)
