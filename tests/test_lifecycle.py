"""How a job's records live and end: ownership that outlives the result, a
lost worker's FAILURE that stays final, herd claims that hold, and each Flask
app sending through its own Celery."""

from __future__ import annotations

import os
import time

import pytest
import redis

from flask_jobtastic import JobtasticTask, results, side_records
from flask_jobtastic.binding import registered_instance
from flask_jobtastic.lifecycle import cache_ttl
from tests import tasks
from tests.app_factory import close_app, create_app
from tests.tasks import CancellableTask, CountedTask, RetryLaterTask, SilentTask

ALICE = {"X-User": "alice"}
BOB = {"X-User": "bob"}


def backend_redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["JOBTASTIC_TEST_BACKEND_URL"])


def wait_for(client, task_id, predicate, headers=ALICE, timeout=15.0):
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        document = client.get(f"/jobtastic/status/{task_id}", headers=headers).get_json()
        seen.append(document)
        if predicate(document):
            return seen
        time.sleep(0.02)
    raise AssertionError(f"{task_id} never matched; last {seen[-1]}")


@pytest.fixture
def owned_app():
    app = create_app(owner_header="X-User", JOBTASTIC_ALLOW_UNOWNED=True)
    yield app
    close_app(app)


# -- ownership outlives the result --------------------------------------------


@pytest.mark.usefixtures("celery_worker")
def test_the_owner_record_outlives_the_result_and_its_loss_fails_closed(owned_app, token):
    client = owned_app.test_client()
    with owned_app.test_request_context(headers=ALICE):
        result = CountedTask.delay_or_fail(token=token, value=1, seconds=0.3)
    wait_for(client, result.id, lambda d: d["state"] == "SUCCESS")
    store = backend_redis()
    meta_ttl = store.ttl(f"celery-task-meta-{result.id}")
    owner_ttl = store.ttl(side_records.side_key("job", result.id))
    # renewed as the job ended, with a margin over the meta Celery just wrote
    assert owner_ttl >= meta_ttl + results.JOB_RECORD_MARGIN - 5, (owner_ttl, meta_ttl)
    # a record that is gone anyway (evicted, deleted) makes the job nobody's,
    # even with JOBTASTIC_ALLOW_UNOWNED
    store.delete(side_records.side_key("job", result.id))
    for headers in (ALICE, BOB, {}):
        response = client.get(f"/jobtastic/status/{result.id}", headers=headers)
        assert response.status_code == 404 and response.get_json()["state"] == "UNKNOWN"


def test_cached_ids_live_no_longer_than_the_results_they_point_to(token):
    app = create_app(
        CELERY={
            "broker_url": os.environ["JOBTASTIC_TEST_BROKER_URL"],
            "result_backend": os.environ["JOBTASTIC_TEST_BACKEND_URL"],
            "result_expires": 120,
        }
    )
    try:
        with app.app_context():
            task = registered_instance(CountedTask)
            assert cache_ttl(task) == 60  # cache_duration below result_expires
            forever = type(task).cache_duration
            type(task).cache_duration = 0  # "forever" means as long as the result lives
            try:
                assert cache_ttl(task) == 120
            finally:
                type(task).cache_duration = forever
    finally:
        close_app(app)


# -- a lost worker's FAILURE is final ------------------------------------------


@pytest.mark.usefixtures("celery_worker")
def test_a_failure_shown_for_a_missing_heartbeat_never_turns_back(owned_app, token):
    """The alive marker vanishes while the job runs on (as after a result-backend
    outage longer than the heartbeat): once a reader showed WorkerLost, the job
    may not write PROGRESS or SUCCESS over it; it stops instead."""
    client = owned_app.test_client()
    with owned_app.test_request_context(headers=ALICE):
        result = CancellableTask.delay_or_fail(token=token, steps=40, pause=0.1)
    wait_for(client, result.id, lambda d: d["state"] == "PROGRESS" and d["progress_percent"] > 0)
    backend_redis().delete(side_records.side_key("run", result.id))
    lost = client.get(f"/jobtastic/status/{result.id}", headers=ALICE).get_json()
    if lost["state"] != "FAILURE":  # the heartbeat renewed it first: try once more
        backend_redis().delete(side_records.side_key("run", result.id))
        lost = client.get(f"/jobtastic/status/{result.id}", headers=ALICE).get_json()
    assert lost["state"] == "FAILURE" and lost["error"]["type"] == "WorkerLost"
    stopped_at = tasks.ticks(token)
    for _ in range(30):  # 3 s: well past its progress writes and its heartbeat
        document = client.get(f"/jobtastic/status/{result.id}", headers=ALICE).get_json()
        assert document["state"] == "FAILURE", document
        time.sleep(0.1)
    assert tasks.ticks(token) <= stopped_at + 1  # it stopped at its next write
    # and the herd key went with it: the same call starts afresh
    with owned_app.test_request_context(headers=ALICE):
        again = CancellableTask.delay_or_fail(token=token, steps=1, pause=0)
    assert again.id != result.id


# -- herd claims ----------------------------------------------------------------


def test_herd_timeouts_too_short_to_renew_are_refused_at_class_definition():
    with pytest.raises(TypeError, match="at least 2 seconds"):

        class TooShort(JobtasticTask):
            herd_avoidance_timeout = 1

            def calculate_result(self) -> None:
                return None


@pytest.mark.usefixtures("celery_worker")
def test_a_job_waiting_to_retry_keeps_its_claim(app, token):
    with app.app_context():
        first = RetryLaterTask.delay_or_fail(token=token, countdown=4.0)
        deadline = time.monotonic() + 10
        while tasks.runs(token) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(3.0)  # longer than herd_avoidance_timeout, inside the countdown
        joined = RetryLaterTask.delay_or_fail(token=token, countdown=4.0)
        assert joined.id == first.id
        assert first.get(timeout=15) == 2
    assert tasks.runs(token) == 2


# -- each Flask app sends through its own Celery -------------------------------


def test_two_apps_in_one_process_each_send_through_their_own_celery(token):
    base = os.environ["JOBTASTIC_TEST_BACKEND_URL"].rsplit("/", 1)[0]

    def app_on(db: int):
        return create_app(
            CELERY={"broker_url": f"{base}/{db}", "result_backend": f"{base}/{db + 1}"}
        )

    first, second = app_on(10), app_on(12)
    try:
        brokers = {db: redis.Redis.from_url(f"{base}/{db}") for db in (10, 12)}
        stores = {db: redis.Redis.from_url(f"{base}/{db + 1}") for db in (10, 12)}
        for client in (*brokers.values(), *stores.values()):
            client.flushdb()
        with first.app_context():
            sent_first = SilentTask.delay(token=token, seconds=0)
        with second.app_context():
            sent_second = SilentTask.delay(token=token + "b", seconds=0)
            eager = SilentTask.apply(kwargs={"token": token + "c", "seconds": 0})
        assert brokers[10].llen("celery") == 1 and brokers[12].llen("celery") == 1
        assert stores[10].exists(f"celery-task-meta-{sent_first.id}")
        assert not stores[12].exists(f"celery-task-meta-{sent_first.id}")
        assert stores[12].exists(f"celery-task-meta-{sent_second.id}")
        # a run's self.backend is its own app's too
        assert stores[12].exists(f"celery-task-meta-{eager.id}")
        assert not stores[10].exists(f"celery-task-meta-{eager.id}")
        for client in (*brokers.values(), *stores.values()):
            client.flushdb()
    finally:
        close_app(first)
        close_app(second)


@pytest.mark.usefixtures("celery_worker")
def test_a_result_backend_pause_longer_than_the_heartbeat_never_flips_a_final_state(
    app, redis_server, token
):
    """The one Redis stops answering (SIGSTOP) for longer than the alive marker
    lives while a page polls, then comes back: whatever the page saw, a final
    state stays. (Which side the resumed server answers first decides whether
    the page sees WorkerLost; the test above forces that case.)"""
    import signal
    import threading

    from tests.tasks import BriefHeartbeatTask

    client = app.test_client()
    with app.app_context():
        result = BriefHeartbeatTask.delay_or_fail(token=token, steps=80, pause=0.1)
    wait_for(client, result.id, lambda d: d["state"] == "PROGRESS", headers={})
    seen: list[dict] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            response = client.get(f"/jobtastic/status/{result.id}")
            if response.status_code == 200:
                seen.append(response.get_json())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    os.kill(redis_server.pid, signal.SIGSTOP)
    try:
        time.sleep(4.5)  # the marker lives 3 s
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)
    deadline = time.monotonic() + 20
    while not (seen and seen[-1]["ready"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    done.set()
    watcher.join(5)
    states = [d["state"] for d in seen]
    assert seen and seen[-1]["ready"], states[-5:]
    first_final = next(i for i, d in enumerate(seen) if d["ready"])
    assert {d["state"] for d in seen[first_final:]} == {seen[first_final]["state"]}, (
        states,
        seen[first_final],
    )


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_a_pool_process_killed_mid_job_reads_as_a_lost_worker_everywhere(make_rig, broker, token):
    """SIGKILL to the prefork child running a tracked job (the OOM killer's way):
    Celery's main process reports WorkerLostError. The page says the worker
    stopped (not the generic failure), "my jobs" says failed, and the herd key is free."""
    from tests.tasks import ShortHerdTask

    rig = make_rig("prefork", broker, fresh=True, owner_header="X-User")
    client = rig.app.test_client()
    with rig.app.test_request_context(headers=ALICE):
        doomed = ShortHerdTask.delay_or_fail(token=token, seconds=30)
    wait_for(client, doomed.id, lambda d: d["state"] == "PROGRESS")
    killed_at = time.monotonic()
    rig.kill_child_running(doomed.id)
    seen = wait_for(client, doomed.id, lambda d: d["ready"], timeout=20)
    noticed = time.monotonic() - killed_at
    document = seen[-1]
    assert document["state"] == "FAILURE" and document["error"]["type"] == "WorkerLost"
    assert "stopped unexpectedly" in document["error"]["message"]
    # Celery's report, or the heartbeat marker's end: within the README's bound
    assert noticed < ShortHerdTask.herd_avoidance_timeout + 2, noticed
    jobs = client.get("/jobtastic/jobs?all=1", headers=ALICE).get_json()["jobs"]
    assert [job["state"] for job in jobs if job["id"] == doomed.id] == ["failed"]
    with rig.app.test_request_context(headers=ALICE):
        again = ShortHerdTask.delay_or_fail(token=token, seconds=0.1)
    assert again.id != doomed.id  # the claim went with the lost run


# -- a cancel every worker hears ------------------------------------------------


def test_a_job_another_worker_marked_revoked_still_cleans_up_and_stops(make_rig, token):
    """Celery's revoke broadcast reaches every worker on the broker; one that does
    not hold the job stores REVOKED for it while it reads PENDING (a job that has
    not reported yet). The job must take that as the cancel it is: its
    ``on_cancel`` runs and it stops, as when the cancel reaches it first."""
    # the job's own worker writes nothing before the job reports (no PROGRESS 0)
    rig = make_rig("prefork", "redis", worker_env={"JOBTASTIC_TEST_STARTED_DELAY": "30"})
    make_rig("solo", "redis")  # a second worker on the same broker, as in production
    client = rig.app.test_client()
    result = CancellableTask.delay_or_fail(token=token, steps=40, pause=0.1, quiet_for=1.5)
    deadline = time.monotonic() + 15
    while tasks.runs(token) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert tasks.runs(token) == 1
    assert client.get(f"/jobtastic/status/{result.id}").get_json()["state"] == "PENDING"
    response = client.post(f"/jobtastic/cancel/{result.id}", headers={"X-Requested-With": "x"})
    assert response.status_code == 200
    wait_for(client, result.id, lambda d: d["state"] == "REVOKED", headers={})
    deadline = time.monotonic() + 10
    while not tasks.cleaned_up(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tasks.cleaned_up(token), rig.worker.log_tail()
    stopped_at = tasks.ticks(token)
    time.sleep(0.5)
    assert tasks.ticks(token) == stopped_at <= 1  # it stopped at its first write
    assert client.get(f"/jobtastic/status/{result.id}").get_json()["state"] == "REVOKED"
