"""The signals of ``flask_jobtastic.signals``, sent by real calls on a real worker.

``task_changed`` is asserted where the registry is (test_registry.py,
test_rich_progress.py); here the four a call sends: ``job_sent``,
``herd_joined``, ``cache_hit`` and ``broker_unavailable``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from blinker import Signal
from flask import Flask

from flask_jobtastic import keys, signals
from flask_jobtastic.herd import cache_get
from tests import tasks
from tests.app_factory import close_app, create_app
from tests.caches import wait_for
from tests.rig import Servers
from tests.tasks import CountedTask

SIGNALS = [signals.job_sent, signals.cache_hit, signals.herd_joined, signals.broker_unavailable]


@dataclass
class Sent:
    """One signal as a receiver got it."""

    signal: str
    sender: Any
    task_id: str
    error: Exception | None = None


class Recorder:
    """Receives every signal of a call, in order."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self._lock = threading.Lock()

    def receiver(self, signal: Signal) -> Callable[..., None]:
        def receive(sender: Any, **kwargs: Any) -> None:
            with self._lock:
                self.sent.append(Sent(signal.name, sender, **kwargs))

        return receive

    def names(self) -> list[tuple[str, str]]:
        return [(sent.signal, sent.task_id) for sent in self.sent]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recorder = Recorder()
    receivers = [(signal, recorder.receiver(signal)) for signal in SIGNALS]
    for signal, receive in receivers:
        signal.connect(receive, weak=False)
    yield recorder
    for signal, receive in receivers:
        signal.disconnect(receive)


def wait_until_cached(app: Flask, task_id: str, **kwargs: Any) -> None:
    """The worker caches the id just after storing SUCCESS: wait for that too."""
    state = app.extensions["jobtastic"]
    task = state.celery.tasks[CountedTask.name]
    key = keys.result_key(task.cache_key_for(kwargs=kwargs))
    wait_for(lambda: cache_get(state.cache_backend, key) == task_id, timeout=5)


@pytest.mark.usefixtures("celery_worker")
def test_job_sent_names_the_job_that_was_sent(app: Flask, token: str, recorder: Recorder) -> None:
    with app.app_context():
        result = CountedTask.delay_or_fail(token=token, value=1, seconds=0.1)
        assert recorder.names() == [("job-sent", result.id)]
        assert recorder.sent[0].sender.name == CountedTask.name  # the task is the sender
        assert result.get(timeout=10) == {"value": 1, "token": token}  # really sent: it ran
    assert tasks.runs(token) == 1


@pytest.mark.usefixtures("celery_worker")
def test_an_identical_call_while_the_first_runs_sends_herd_joined(
    app: Flask, token: str, recorder: Recorder
) -> None:
    with app.app_context():
        first = CountedTask.delay_or_fail(token=token, value=2, seconds=2)
        wait_for(lambda: tasks.runs(token) == 1, timeout=10)  # the worker computes it now
        second = CountedTask.delay_or_fail(token=token, value=2, seconds=2)
        assert second.id == first.id
        assert recorder.names() == [("job-sent", first.id), ("herd-joined", first.id)]
        assert recorder.sent[1].sender.name == CountedTask.name
        assert second.get(timeout=10) == {"value": 2, "token": token}
    assert tasks.runs(token) == 1  # joined, not computed twice


@pytest.mark.usefixtures("celery_worker")
def test_a_call_answered_from_the_cache_sends_cache_hit(
    app: Flask, token: str, recorder: Recorder
) -> None:
    with app.app_context():
        first = CountedTask.delay_or_fail(token=token, value=3, seconds=0.1)
        assert first.get(timeout=10) == {"value": 3, "token": token}
        wait_until_cached(app, first.id, token=token, value=3)
        again = CountedTask.delay_or_fail(token=token, value=3, seconds=0.1)
    assert again.id == first.id
    assert recorder.names() == [("job-sent", first.id), ("cache-hit", first.id)]
    assert recorder.sent[1].sender.name == CountedTask.name
    assert tasks.runs(token) == 1


def test_a_dead_broker_sends_broker_unavailable_with_the_error(
    make_servers: Callable[..., Servers], token: str, recorder: Recorder
) -> None:
    # A broker Redis of its own, killed; the result backend's Redis stays up.
    servers = make_servers("separate-redis")
    assert servers.broker is not None
    app = create_app(servers=servers.env())
    try:
        servers.broker.kill()
        with app.app_context():
            result = CountedTask.delay_or_fail(token=token, value=4)
        assert result.state == "FAILURE"
    finally:
        close_app(app)
    assert recorder.names() == [("broker-unavailable", result.id)]  # and no job-sent
    sent = recorder.sent[0]
    assert sent.sender.name == CountedTask.name
    assert isinstance(sent.error, Exception) and str(sent.error)
    assert tasks.runs(token) == 0
