"""The per-process heartbeat thread: when it renews, and that it stops renewing."""

from __future__ import annotations

import threading
import time

from flask_jobtastic.heartbeat import MIN_TIMEOUT, Heartbeat


def _recorder() -> tuple[list[float], threading.Event, object]:
    calls: list[float] = []
    called = threading.Event()

    def renew() -> None:
        calls.append(time.monotonic())
        called.set()

    return calls, called, renew


def test_first_renewal_comes_after_first_in_then_every_third_of_the_timeout():
    beat = Heartbeat()
    calls, called, renew = _recorder()
    added = time.monotonic()
    beat.add("job", MIN_TIMEOUT, renew, first_in=0.05)
    assert called.wait(2)
    assert 0.04 <= calls[0] - added < 0.5
    deadline = time.monotonic() + 3
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    beat.remove("job")
    assert len(calls) >= 2
    assert calls[1] - calls[0] >= MIN_TIMEOUT / 3 - 0.05


def test_without_first_in_nothing_is_renewed_before_a_third_of_the_timeout():
    beat = Heartbeat()
    calls, called, renew = _recorder()
    beat.add("job", 3.0, renew)
    assert not called.wait(0.6)  # a third of 3 s is 1 s
    assert called.wait(2)
    beat.remove("job")


def test_a_removed_claim_is_never_renewed_and_an_idle_thread_wakes_for_a_new_one():
    beat = Heartbeat()
    calls, called, renew = _recorder()
    beat.add("gone", MIN_TIMEOUT, renew, first_in=0.2)
    beat.remove("gone")
    time.sleep(0.4)
    assert calls == []
    # the thread now sleeps with nothing to renew; a new claim must wake it
    beat.add("next", MIN_TIMEOUT, renew, first_in=0.05)
    assert called.wait(1)
    beat.remove("next")


def test_a_failing_renewal_is_logged_and_the_others_go_on(caplog):
    beat = Heartbeat()
    calls, called, renew = _recorder()

    def broken() -> None:
        raise ConnectionError("result backend down")

    beat.add("broken", MIN_TIMEOUT, broken, first_in=0.01)
    beat.add("fine", MIN_TIMEOUT, renew, first_in=0.05)
    assert called.wait(2)
    beat.remove("broken")
    beat.remove("fine")
    assert "Could not renew the claim of job broken" in caplog.text


def test_a_first_delay_longer_than_the_renewal_period_is_capped_to_it():
    # otherwise a claim would expire before its first renewal
    beat = Heartbeat()
    calls, called, renew = _recorder()
    added = time.monotonic()
    beat.add("job", MIN_TIMEOUT, renew, first_in=3600)
    assert called.wait(MIN_TIMEOUT)
    assert calls[0] - added < MIN_TIMEOUT / 3 + 0.3
    beat.remove("job")
