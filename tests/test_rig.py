"""The rig is the README's deployment, and its variants run jobs as users would.

What users deploy: ``celery ... worker`` (prefork, two children) on one Redis,
or with a RabbitMQ broker; the threads and solo pools work too. A pool child
killed by the OOM killer is replaced and the worker keeps serving.
"""

from __future__ import annotations

import time

import psutil
import pytest

from tests.polling import poll
from tests.rig import BROKERS, POOLS, RigFactory, WorkerProcess
from tests.tasks import DivisionTask, SlowProgressTask


def test_the_shared_worker_is_the_readmes_prefork_worker_on_one_redis(
    celery_worker: WorkerProcess, app, client, token
) -> None:
    assert "--pool" not in " ".join(celery_worker.command())  # Celery's default pool
    assert len(celery_worker.wait_for_pool_children()) == 2
    celery = app.extensions["jobtastic"].celery
    broker, backend = celery.conf.broker_url, celery.conf.result_backend
    assert broker.rsplit("/", 1)[0] == backend.rsplit("/", 1)[0]  # the same server
    with app.app_context():
        result = DivisionTask.delay_or_fail(numerators=[6], denominators=[3], token=token)
    _, document = poll(client, result.id, lambda doc: doc["ready"])
    assert document["state"] == "SUCCESS" and document["result"] == [2.0]


@pytest.mark.parametrize("broker", BROKERS)
@pytest.mark.parametrize("pool", POOLS)
def test_a_job_runs_on_every_pool_and_broker(make_rig: RigFactory, pool, broker, token) -> None:
    rig = make_rig(pool, broker)
    assert rig.broker_url.startswith("amqp://" if broker == "rabbitmq" else "redis://")
    with rig.app.app_context():
        result = DivisionTask.delay_or_fail(numerators=[1, 9], denominators=[2, 3], token=token)
    _, document = poll(rig.app.test_client(), result.id, lambda doc: doc["ready"])
    assert document["state"] == "SUCCESS" and document["result"] == [0.5, 3.0]


@pytest.mark.parametrize("broker", BROKERS)
def test_a_killed_pool_child_is_replaced_and_the_worker_serves_on(
    make_rig: RigFactory, broker, token
) -> None:
    rig = make_rig("prefork", broker, fresh=True)
    before = rig.worker.wait_for_pool_children()
    with rig.app.app_context():
        doomed = SlowProgressTask.delay_or_fail(token=token, seconds=30, steps=300)
    killed = rig.kill_child_running(doomed.id)
    assert killed in before
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == "zombie"
    assert rig.worker.alive  # the main process lives on

    def replaced() -> bool:
        pids = [child.pid for child in rig.worker.pool_children()]
        return len(pids) == 2 and killed not in pids

    poll_until(replaced)
    with rig.app.app_context():
        result = DivisionTask.delay_or_fail(numerators=[4], denominators=[2], token=token)
    _, document = poll(rig.app.test_client(), result.id, lambda doc: doc["ready"])
    assert document["state"] == "SUCCESS" and document["result"] == [2.0]


def poll_until(check, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{check.__name__} never held"
        time.sleep(0.05)
