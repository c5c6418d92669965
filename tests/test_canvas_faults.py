"""A canvas under faults, with real processes: the broker killed as it is sent, a
pool child SIGKILLed under one part, and a person pressing Cancel.

Broker-facing tests run on both brokers (RabbitMQ and Redis); the worker is
Celery's prefork pool, as the README starts it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from celery import chain, group
from flask import Flask

from flask_jobtastic import canvas_or_eager, canvas_or_fail
from flask_jobtastic.canvas import part_ids
from tests import tasks
from tests.app_factory import close_app, create_app
from tests.canvas_tasks import BriefClaimPart, RowsPart, SumPart
from tests.polling import poll
from tests.rig import BROKERS, Servers

ALICE = {"X-User": "alice"}
POST = {"X-Requested-With": "test"}


def start(app, signature, fallback=canvas_or_fail, **options):
    with app.test_request_context(headers=ALICE):
        return fallback(signature, **options)


def ended(document):
    return document["ready"]


def parts_of(app, canvas_id):
    with app.app_context():
        return part_ids(app.extensions["jobtastic"], canvas_id)


# -- the broker down as the canvas is sent ------------------------------------------------


@pytest.fixture(params=["rabbitmq", "separate-redis"])
def fragile_app(
    request: pytest.FixtureRequest, make_servers: Callable[..., Servers]
) -> Iterator[tuple[Flask, Servers]]:
    """An app whose broker is a server of its own; results on a Redis that stays up."""
    servers = make_servers(request.param)
    app = create_app(servers=servers.env(), owner_header="X-User")
    yield app, servers
    close_app(app)


def test_canvas_or_fail_with_the_broker_killed_fails_within_a_second(fragile_app, token):
    app, servers = fragile_app
    with app.app_context():  # one good send first, so the producer holds a live connection
        tasks.CountedTask.delay_or_fail(token=token + "-warm", value=0, seconds=0)
    servers.broker.kill()
    started = time.monotonic()
    canvas = start(app, group(RowsPart.s(token=token, rows=2, part=i) for i in range(5)))
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, elapsed
    response = app.test_client().get(f"/jobtastic/status/{canvas.id}", headers=ALICE)
    document = response.get_json()
    assert response.status_code == 200
    assert document["state"] == "FAILURE" and document["ready"] is True
    assert document["error"]["type"] == "BrokerUnavailable"
    assert document["children"]["pending"] == 0  # nothing waits for a worker


def test_canvas_or_eager_with_the_broker_killed_runs_it_here(fragile_app, token):
    app, servers = fragile_app
    servers.broker.kill()
    signature = chain(RowsPart.s(token=token, rows=3), SumPart.s(extra=2))
    canvas = start(app, signature, fallback=canvas_or_eager)
    document = app.test_client().get(f"/jobtastic/status/{canvas.id}", headers=ALICE).get_json()
    assert document["state"] == "SUCCESS", document
    assert document["result"] == 5
    assert tasks.runs(token) == 1  # computed once, in this process


# -- a part's pool child killed ---------------------------------------------------------------


def test_a_part_whose_pool_child_is_killed_fails_the_canvas(make_rig, token):
    rig = make_rig("prefork", "redis", owner_header="X-User")
    client = rig.app.test_client()
    parts = [RowsPart.s(token=token, rows=400, part=i, pause=0.02) for i in (1, 2)]
    canvas = start(rig.app, group(parts))
    poll(client, canvas.id, lambda d: d["children"]["running"] == 2, timeout=30, headers=ALICE)
    rig.kill_child_running(parts_of(rig.app, canvas.id)[0])
    _, document = poll(client, canvas.id, ended, timeout=30, headers=ALICE)
    assert document["state"] == "FAILURE"
    assert document["error"]["type"] == "WorkerLost"  # as a lone job whose worker died reads
    assert "stopped unexpectedly" in document["error"]["message"]
    assert document["error"]["error_id"]
    # the other part was asked to stop, and did
    _, document = poll(
        client, canvas.id, lambda d: d["children"]["running"] == 0, timeout=30, headers=ALICE
    )
    assert document["children"]["failed"] == 1 and document["children"]["revoked"] == 1


def test_a_whole_worker_killed_fails_the_canvas_once_its_marker_expired(make_rig, token):
    rig = make_rig("prefork", "redis", fresh=True, owner_header="X-User")
    client = rig.app.test_client()
    parts = [BriefClaimPart.s(token=token, rows=400, part=i, pause=0.02) for i in range(3)]
    canvas = start(rig.app, group(parts))  # two run on the two children, one waits
    poll(client, canvas.id, lambda d: d["progress_percent"] > 0, timeout=30, headers=ALICE)
    rig.worker.kill()  # the main process and its children: no one reports anything
    killed_at = time.monotonic()
    _, document = poll(client, canvas.id, ended, timeout=15, headers=ALICE)
    # the parts' heartbeats kept the canvas's marker: herd_avoidance_timeout + 1 = 3 s
    assert time.monotonic() - killed_at < 6
    assert document["state"] == "FAILURE" and document["error"]["type"] == "WorkerLost"
    _, document = poll(
        client, canvas.id, lambda d: d["children"]["failed"] == 2, timeout=5, headers=ALICE
    )
    assert document["children"] == {
        "total": 3,
        "pending": 0,
        "running": 0,
        "succeeded": 0,
        "failed": 2,
        "revoked": 1,
    }
    page = client.get(f"/jobtastic/status/{canvas.id}?children=1", headers=ALICE).get_json()
    # a part that had written PROGRESS reads lost on its own too
    assert "WorkerLost" in [part.get("error", {}).get("type") for part in page["parts"]]


# -- cancel -----------------------------------------------------------------------------


#: The README's pool on both brokers, then the other pools on Redis.
EVERY_RIG = [("prefork", broker) for broker in BROKERS] + [("threads", "redis"), ("solo", "redis")]


@pytest.mark.parametrize("rig_kind", EVERY_RIG, ids="-".join)
def test_cancel_stops_every_part_running_or_queued(make_rig, rig_kind, token, counter):
    pool, broker = rig_kind
    rig = make_rig(pool, broker, owner_header="X-User")
    client = rig.app.test_client()
    # some parts run on the worker's pool, the others wait in the queue
    parts = [RowsPart.s(token=token, rows=300, part=i, pause=0.02) for i in range(4)]
    canvas = start(rig.app, group(parts))
    poll(client, canvas.id, lambda d: d["children"]["running"] >= 1, timeout=30, headers=ALICE)
    response = client.post(f"/jobtastic/cancel/{canvas.id}", headers={**ALICE, **POST})
    assert response.status_code == 200
    answer = response.get_json()
    assert answer["state"] == "REVOKED" or answer["cancel_pending"] is True
    _, document = poll(client, canvas.id, ended, timeout=30, headers=ALICE)
    assert document["state"] == "REVOKED"
    assert document["children"] == {
        "total": 4,
        "pending": 0,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "revoked": 4,
    }
    runs = tasks.runs(token)
    time.sleep(1.0)
    assert tasks.runs(token) == runs  # nothing runs on after the canvas reads REVOKED
    assert 1 <= runs < 4  # the queued parts never started their work
    # on_cancel ran in each part that ran (and in one stopped as it started),
    # though other workers on the broker may have stored REVOKED for a part
    # before it reported
    assert runs <= int(counter.get(f"cleaned:{token}") or 0) <= 4
    for part_id in parts_of(rig.app, canvas.id):
        part = client.get(f"/jobtastic/status/{part_id}", headers=ALICE).get_json()
        assert part["state"] == "REVOKED"


def test_cancel_of_a_chain_stops_the_running_stage_and_sends_no_more(make_rig, token):
    rig = make_rig("prefork", "redis", owner_header="X-User")
    client = rig.app.test_client()
    stages = chain(RowsPart.s(token=token, rows=300, pause=0.02), SumPart.s(token=token))
    canvas = start(rig.app, stages)
    poll(client, canvas.id, lambda d: d["children"]["running"] == 1, timeout=30, headers=ALICE)
    client.post(f"/jobtastic/cancel/{canvas.id}", headers={**ALICE, **POST})
    _, document = poll(client, canvas.id, ended, timeout=30, headers=ALICE)
    assert document["state"] == "REVOKED"
    assert document["children"]["revoked"] == 2
    time.sleep(0.5)
    assert tasks.runs(token) == 1  # the second stage never ran
