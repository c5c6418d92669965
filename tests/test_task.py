"""JobtasticTask end to end: a real prefork worker, one Redis as broker and backend,
memcached; the herd and retry tests again with a RabbitMQ broker."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid

import pytest
import redis
from celery.signals import before_task_publish

from flask_jobtastic.binding import registered_instance
from tests import tasks
from tests.polling import poll
from tests.rig import every_broker
from tests.tasks import (
    AppContextTask,
    CountedTask,
    DivisionTask,
    FailingTask,
    LeakyTask,
    MillionProgressTask,
    PositionalTask,
    RetryingTask,
    SlowProgressTask,
    UnserializableTask,
)

pytestmark = pytest.mark.usefixtures("celery_worker")


class PublishCounter:
    """Counts messages really handed to the broker by this process."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, **kwargs) -> None:
        with self._lock:
            self.count += 1


@pytest.fixture
def published():
    counter = PublishCounter()
    before_task_publish.connect(counter, weak=False)
    yield counter
    before_task_publish.disconnect(counter)


def wait_state(result, state, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result.state == state:
            return
        time.sleep(0.05)
    raise AssertionError(f"{result.id} never reached {state}, last {result.state}")


@every_broker
def test_cache_hit_returns_same_id_sends_nothing_and_does_not_recompute(app, token, published):
    with app.app_context():
        first = CountedTask.delay_or_fail(token=token, value=1, seconds=0.1)
        assert first.get(timeout=10) == {"value": 1, "token": token}
        assert published.count == 1
        time.sleep(0.2)  # on_success caches the id right after storing the result
        second = CountedTask.delay_or_fail(token=token, value=1, seconds=0.1)
        assert second.id == first.id
        assert second.get(timeout=5) == {"value": 1, "token": token}
    assert published.count == 1
    assert tasks.runs(token) == 1


@every_broker
def test_fifty_concurrent_identical_calls_compute_once(app, token, published):
    ids: list[str] = []
    barrier = threading.Barrier(50)

    def call() -> None:
        with app.app_context():
            barrier.wait()
            ids.append(CountedTask.delay_or_fail(token=token, value="same", seconds=1.0).id)

    threads = [threading.Thread(target=call) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 50 and len(set(ids)) == 1
    with app.app_context():
        CountedTask.AsyncResult(ids[0]).get(timeout=15)
    assert tasks.runs(token) == 1
    assert published.count == 1


def test_different_significant_values_give_different_jobs(app, token):
    with app.app_context():
        a = PositionalTask.delay_or_fail(a="ab", b="c", token=token)
        b = PositionalTask.delay_or_fail(a="a", b="bc", token=token)
        assert a.id != b.id
        assert a.get(timeout=10) == "abc" and b.get(timeout=10) == "abc"
        c = CountedTask.delay_or_fail(token=token, value=2, seconds=0)
        d = CountedTask.delay_or_fail(token=token, value=3, seconds=0)
        assert c.id != d.id
        c.get(timeout=10), d.get(timeout=10)
    assert tasks.runs(token) == 4


def test_positional_arguments_are_bound_to_their_names(app, token):
    with app.app_context():
        positional = PositionalTask.delay_or_fail("x", "y", token)
        keyword = PositionalTask.delay_or_fail(a="x", b="y", token=token)
        assert keyword.id == positional.id
        assert positional.get(timeout=10) == "xy"
        with pytest.raises(TypeError, match="b"):
            PositionalTask.delay_or_fail("only-a")
    assert tasks.runs(token) == 1


@every_broker
def test_apply_async_on_the_class_goes_through_dedup(app, token):
    with app.app_context():
        one = CountedTask.apply_async(kwargs={"token": token, "value": 9, "seconds": 0.5})
        two = CountedTask.apply_async((token, 9), {"seconds": 0.5})
        three = CountedTask.delay(token, 9, seconds=0.5)
        assert one.id == two.id == three.id
        one.get(timeout=10)
    assert tasks.runs(token) == 1


@every_broker
def test_herd_avoidance_can_be_skipped_for_one_call(app, token):
    with app.app_context():
        first = CountedTask.apply_async(kwargs={"token": token, "value": 1, "seconds": 0.5})
        second = CountedTask.apply_async(
            kwargs={"token": token, "value": 1, "seconds": 0.5}, herd_avoidance=False
        )
        assert first.id != second.id
        first.get(timeout=10), second.get(timeout=10)
    assert tasks.runs(token) == 2


@every_broker
def test_herd_key_cleared_after_failure_and_failures_are_not_cached(app, token):
    with app.app_context():
        first = FailingTask.delay_or_fail(token=token)
        with pytest.raises(ValueError):
            first.get(timeout=10)
        time.sleep(0.2)
        second = FailingTask.delay_or_fail(token=token)
        assert second.id != first.id
        with pytest.raises(ValueError):
            second.get(timeout=10)
    assert tasks.runs(token) == 2


@every_broker
def test_herd_key_cleared_after_revoke(app, token):
    with app.app_context():
        queued = SlowProgressTask.apply_async(
            kwargs={"token": token, "seconds": 0.2}, countdown=1.5
        )
        same = SlowProgressTask.delay_or_fail(token=token, seconds=0.2)
        assert same.id == queued.id
        queued.revoke()
        wait_state(queued, "REVOKED", timeout=10)
        time.sleep(0.3)
        fresh = SlowProgressTask.delay_or_fail(token=token, seconds=0.2)
        assert fresh.id != queued.id
        assert fresh.get(timeout=10) == token
    assert tasks.runs(token) == 1


@every_broker
def test_retry_really_runs_again(app, token):
    with app.app_context():
        result = RetryingTask.delay_or_fail(token=token)
        assert result.get(timeout=15) == 2
    assert tasks.runs(token) == 2


def test_unserializable_result_fails_naming_the_problem(app, token):
    with app.app_context():
        result = UnserializableTask.delay_or_fail(token=token)
        with pytest.raises(TypeError, match="cannot be stored as JSON"):
            result.get(timeout=10)


def progress_messages(redis_url: str, task_id: str, run) -> list[dict]:
    """Every meta the worker published for ``task_id`` while ``run()`` ran."""
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.subscribe(f"celery-task-meta-{task_id}")
    pubsub.get_message(timeout=1)  # subscribe confirmation
    run()
    messages = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1)
        if message and message["type"] == "message":
            meta = json.loads(message["data"])
            messages.append(meta)
            if meta["status"] in ("SUCCESS", "FAILURE"):
                break
    pubsub.close()
    client.close()
    return messages


def test_progress_starts_at_0_is_clamped_throttled_and_ends_at_100(app, token, redis_server):
    task_id = str(uuid.uuid4())
    count = 200

    def run() -> None:
        with app.app_context():
            DivisionTask.apply_async(
                kwargs={
                    "numerators": list(range(count)),
                    "denominators": [1] * count,
                    "token": token,
                    "delay": 0.005,
                },
                task_id=task_id,
            ).get(timeout=20)

    messages = progress_messages(redis_server.url, task_id, run)
    progress = [m["result"] for m in messages if m["status"] == "PROGRESS"]
    assert messages[-1]["status"] == "SUCCESS"
    assert progress[0]["progress_percent"] == 0
    assert progress[0]["time_remaining"] == -1
    assert progress[-1]["progress_percent"] == 100
    assert all(0 <= p["progress_percent"] <= 100 for p in progress)
    percents = [p["progress_percent"] for p in progress]
    assert percents == sorted(percents)
    # about 1 s of work at a 0.1 s interval: a dozen writes, not 200
    assert len(progress) <= 1.0 / 0.1 + 6
    assert any(p["time_remaining"] > 0 for p in progress[1:-1])


def test_a_job_shorter_than_the_started_delay_skips_progress_0(app, token, redis_server):
    # JOBTASTIC_STARTED_DELAY is 0.1 s: a job done sooner goes PENDING -> SUCCESS
    task_id = str(uuid.uuid4())

    def run() -> None:
        with app.app_context():
            assert CountedTask.apply_async(
                kwargs={"token": token, "seconds": 0}, task_id=task_id
            ).get(timeout=10) == {"value": None, "token": token}

    statuses = [m["status"] for m in progress_messages(redis_server.url, task_id, run)]
    assert statuses == ["SUCCESS"]


def test_a_job_that_reports_nothing_shows_progress_0_once_the_delay_passed(
    app, client, token, redis_server
):
    task_id = str(uuid.uuid4())

    def run() -> None:
        with app.app_context():
            CountedTask.apply_async(kwargs={"token": token, "seconds": 1.0}, task_id=task_id)
        _, document = poll(client, task_id, lambda doc: doc["state"] == "PROGRESS", timeout=10)
        # running, with the heartbeat's alive marker: not reported as lost
        assert document["state"] == "PROGRESS" and document["progress_percent"] == 0
        assert "error" not in document

    messages = progress_messages(redis_server.url, task_id, run)
    assert [m["status"] for m in messages] == ["PROGRESS", "SUCCESS"]
    assert messages[0]["result"]["progress_percent"] == 0


def test_a_quick_job_that_reports_progress_still_shows_0_first(app, token, redis_server):
    task_id = str(uuid.uuid4())

    def run() -> None:
        with app.app_context():
            DivisionTask.apply_async(
                kwargs={"numerators": [1, 2, 3], "denominators": [1, 1, 1], "token": token},
                task_id=task_id,
            ).get(timeout=10)

    messages = progress_messages(redis_server.url, task_id, run)
    percents = [m["result"]["progress_percent"] for m in messages if m["status"] == "PROGRESS"]
    assert percents == [0, 100]
    assert messages[-1]["status"] == "SUCCESS"


def test_a_million_progress_calls_make_few_backend_writes(app, redis_server):
    task_id = str(uuid.uuid4())

    def run() -> None:
        with app.app_context():
            MillionProgressTask.apply_async(kwargs={"n": 1_000_000}, task_id=task_id).get(
                timeout=60
            )

    messages = progress_messages(redis_server.url, task_id, run)
    progress = [m for m in messages if m["status"] == "PROGRESS"]
    duration = messages[-1]["result"]
    assert progress[-1]["result"]["progress_percent"] == 100
    assert len(progress) <= duration / 0.1 + 2, (len(progress), duration)


# -- memory leak detection (eager runs in this process, so we can read the log) --


def run_eager(app, task_cls, **kwargs):
    with app.app_context():
        return registered_instance(task_cls).apply(kwargs=kwargs, task_id=str(uuid.uuid4()))


def test_memleak_below_threshold_is_quiet(app, caplog, token):
    with caplog.at_level(logging.WARNING, logger="flask_jobtastic"):
        run_eager(app, LeakyTask, token=token, megabytes=0)
    assert "Memory leak" not in caplog.text


def test_memleak_above_threshold_warns_with_figures_each_time(app, caplog, token):
    with caplog.at_level(logging.WARNING, logger="flask_jobtastic"):
        run_eager(app, LeakyTask, token=token, megabytes=40)
        run_eager(app, LeakyTask, token=token, megabytes=40)
    warnings = [r for r in caplog.records if "Memory leak" in r.getMessage()]
    assert len(warnings) == 2
    assert token in warnings[0].getMessage()
    growth = warnings[0].args[1]
    assert growth >= 30


def test_memleak_disabled_and_override_receives_figures(app, token):
    seen = []

    class Quiet(LeakyTask):
        memleak_threshold = -1

        def warn_of_memory_leak(self, *args):
            seen.append(args)

    class Loud(LeakyTask):
        memleak_threshold = 0

        def warn_of_memory_leak(self, growth_mb, start_mb, end_mb, args, kwargs):
            seen.append((growth_mb, start_mb, end_mb, kwargs))

    run_eager(app, Quiet, token=token, megabytes=20)
    assert seen == []
    run_eager(app, Loud, token=token, megabytes=20)
    assert len(seen) == 1
    growth, start, end, kwargs = seen[0]
    assert growth == pytest.approx(end - start) and growth > 10
    assert kwargs["megabytes"] == 20


def test_the_job_runs_inside_the_flask_app_context_on_the_worker(app, token):
    with app.app_context():
        result = AppContextTask.delay_or_fail(token=token)
        assert result.get(timeout=10) == {"app": "tests", "prefix": "/jobtastic"}
    # and in the calling process too, when run eagerly without an app context
    eager = AppContextTask.apply(kwargs={"token": token})
    assert eager.get(timeout=10) == {"app": "tests", "prefix": "/jobtastic"}
