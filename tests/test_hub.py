"""The event hub: one pub/sub connection and one reader for every stream of a
process, on the suite's real Redis (and Celery's in-memory result backend
for the polling hub)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask

from flask_jobtastic import Jobtastic, results
from flask_jobtastic.hub import hub_for
from flask_jobtastic.inbox import Inbox


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "it") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def admin() -> redis.Redis:
    return redis.Redis.from_url(os.environ["JOBTASTIC_TEST_BACKEND_URL"])


def plant(backend: Any, task_id: str, percent: float) -> None:
    """What a worker's progress write does: store the meta and publish it."""
    backend.store_result(task_id, {"progress_percent": percent}, "PROGRESS")


def pubsub_connections(client: redis.Redis) -> int:
    return sum(1 for c in client.client_list() if c.get("flags", "").find("P") >= 0)


def test_an_inbox_never_blocks_and_keeps_only_the_newest_record_per_job() -> None:
    inbox = Inbox()
    for percent in range(1000):  # a silent client: nothing is taken meanwhile
        inbox.put_view("job", results.JobView(meta={"status": "PROGRESS", "n": percent}))
    inbox.put_notice("reconnecting")
    inbox.put_notice("reconnecting")
    delivery = inbox.take(timeout=0.1)
    assert delivery is not None
    assert list(delivery.views) == ["job"] and delivery.views["job"].meta["n"] == 999
    assert delivery.notices == ["reconnecting"]
    assert inbox.take(timeout=0.05) is None  # nothing new since


def test_many_watchers_share_one_subscription_and_each_gets_every_change(app: Flask) -> None:
    hub = hub_for(app.extensions["jobtastic"])
    backend = app.extensions["jobtastic"].celery.backend
    task_id = str(uuid.uuid4())
    plant(backend, task_id, 10)
    client = admin()
    before = pubsub_connections(client)
    inboxes = [Inbox() for _ in range(50)]
    watchers = [hub.open(inbox) for inbox in inboxes]
    for watcher in watchers:
        hub.watch(watcher, [task_id])
    channel = backend.get_key_for_task(task_id)
    try:
        for inbox in inboxes:  # the first read, for everyone
            delivery = wait_until(lambda inbox=inbox: inbox.take(0.5), what="the first read")
            assert delivery.views[task_id].meta["result"]["progress_percent"] == 10
        wait_until(lambda: dict(client.pubsub_numsub(channel))[channel] == 1, what="subscribe")
        assert pubsub_connections(client) <= before + 1  # one connection for all fifty
        plant(backend, task_id, 55)
        for inbox in inboxes:
            delivery = wait_until(lambda inbox=inbox: inbox.take(0.5), what="the change")
            assert delivery.views[task_id].meta["result"]["progress_percent"] == 55
    finally:
        for watcher in watchers:
            hub.close(watcher)
    wait_until(lambda: dict(client.pubsub_numsub(channel))[channel] == 0, what="unsubscribe")
    client.close()


def test_a_job_nobody_writes_is_read_again_every_heartbeat(make_app) -> None:
    app = make_app(JOBTASTIC_EVENTS_HEARTBEAT=0.3)
    hub = hub_for(app.extensions["jobtastic"])
    backend = app.extensions["jobtastic"].celery.backend
    task_id = str(uuid.uuid4())
    plant(backend, task_id, 1)
    inbox = Inbox()
    watcher = hub.open(inbox)
    hub.watch(watcher, [task_id])
    try:
        wait_until(lambda: inbox.take(0.5), what="the first read")
        # a silent job (its worker may be gone): read again though no message came
        again = wait_until(lambda: inbox.take(0.5), timeout=2.0, what="a re-read")
        assert task_id in again.views
    finally:
        hub.close(watcher)


def test_a_backend_without_pubsub_is_polled_in_one_read_for_all_streams() -> None:
    app = Flask("polled")
    app.config.update(
        CELERY={"broker_url": "memory://", "result_backend": "cache+memory://"},
        JOBTASTIC_CACHE={"CACHE_TYPE": "SimpleCache"},
        JOBTASTIC_EMBEDDED_WORKER=False,
        JOBTASTIC_EVENTS_POLL_INTERVAL=0.05,
    )
    Jobtastic(app)
    state = app.extensions["jobtastic"]
    hub = hub_for(state)
    reads: list[int] = []
    original = results.read_jobs

    def counting(backend: Any, task_ids: Any) -> Any:
        ids = list(task_ids)
        reads.append(len(ids))
        return original(backend, ids)

    results.read_jobs = counting  # counts the hub's reads; the real read still happens
    try:
        ids = [str(uuid.uuid4()) for _ in range(10)]
        inboxes = [Inbox() for _ in ids]
        watchers = [hub.open(inbox) for inbox in inboxes]
        for watcher, task_id in zip(watchers, ids, strict=True):
            hub.watch(watcher, [task_id])
        for inbox in inboxes:
            wait_until(lambda inbox=inbox: inbox.take(0.5), what="a poll")
        state.celery.backend.store_result(ids[3], {"progress_percent": 40}, "PROGRESS")
        seen = wait_until(
            lambda: (
                (d := inboxes[3].take(0.5)) and d.views[ids[3]].meta.get("status") == "PROGRESS"
            ),
            what="the change",
        )
        assert seen
        assert max(reads) == 10  # all ten jobs in one read, not ten reads
    finally:
        results.read_jobs = original
        for watcher in watchers:
            hub.close(watcher)
        state.celery.close()


def test_the_hub_thread_ends_when_nobody_watches(app: Flask, monkeypatch) -> None:
    from flask_jobtastic import hub as hub_module

    monkeypatch.setattr(hub_module, "IDLE_EXIT", 0.2)
    hub = hub_for(app.extensions["jobtastic"])
    watcher = hub.open(Inbox())
    hub.watch(watcher, [str(uuid.uuid4())])
    thread = wait_until(lambda: hub._thread, what="the hub thread")
    hub.close(watcher)
    thread.join(5)
    assert not thread.is_alive()
    # and a later stream starts it again
    watcher = hub.open(Inbox())
    hub.watch(watcher, [str(uuid.uuid4())])
    assert wait_until(lambda: hub._thread is not None and hub._thread.is_alive())
    hub.close(watcher)


@pytest.mark.usefixtures("test_environment")
def test_watchers_hear_of_a_redis_restart_and_get_fresh_records(make_servers) -> None:
    from tests.app_factory import close_app, create_app

    servers = make_servers("redis")
    app = create_app(servers=servers.env(f"hub-{uuid.uuid4().hex[:8]}"))
    try:
        hub = hub_for(app.extensions["jobtastic"])
        backend = app.extensions["jobtastic"].celery.backend
        task_id = str(uuid.uuid4())
        plant(backend, task_id, 5)
        inbox = Inbox()
        watcher = hub.open(inbox)
        hub.watch(watcher, [task_id])
        wait_until(lambda: inbox.take(0.5), what="the first read")
        wait_until(lambda: hub.connected, what="the subscription")
        servers.redis.kill()
        lost = wait_until(lambda: inbox.take(0.5), timeout=10, what="the loss")
        assert "reconnecting" in lost.notices
        servers.redis.restart()  # empty: it keeps nothing on disk
        notices: list[str] = []

        def resumed() -> bool:
            delivery = inbox.take(0.5)
            notices.extend(delivery.notices if delivery else [])
            return "resumed" in notices

        wait_until(resumed, timeout=15, what="the resubscribe")
        threading.Event().wait(0.2)
        plant(app.extensions["jobtastic"].celery.backend, task_id, 70)

        def fresh() -> Any:
            delivery = inbox.take(0.5)
            view = delivery.views.get(task_id) if delivery else None
            return view if view and view.meta.get("status") == "PROGRESS" else None

        view = wait_until(fresh, timeout=10, what="a change after the restart")
        assert view.meta["result"]["progress_percent"] == 70
        hub.close(watcher)
    finally:
        close_app(app)


@pytest.mark.usefixtures("test_environment")
def test_a_stream_opened_during_an_outage_hears_of_it_at_once(make_servers) -> None:
    from tests.app_factory import close_app, create_app

    servers = make_servers("redis")
    app = create_app(servers=servers.env(f"hub-{uuid.uuid4().hex[:8]}"))
    try:
        hub = hub_for(app.extensions["jobtastic"])
        first = Inbox()
        watcher = hub.open(first)
        hub.watch(watcher, [str(uuid.uuid4())])
        wait_until(lambda: hub.connected, what="the subscription")
        servers.redis.kill()
        wait_until(lambda: (d := first.take(0.5)) and "reconnecting" in d.notices, timeout=10)
        late = Inbox()
        late_watcher = hub.open(late)  # a page opened while Redis is down
        delivery = late.take(0.5)
        assert delivery is not None and delivery.notices == ["reconnecting"]
        hub.close(late_watcher)
        hub.close(watcher)
    finally:
        close_app(app)
