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
from tests.tasks import CountedTask, DivisionTask


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
