from __future__ import annotations

import json

import pytest

from flask_jobtastic import JobFailed
from flask_jobtastic.status import GENERIC_STEP_FAILURE, error_id_for
from flask_jobtastic.steps import StepRecorder
from tests import strict
from tests.app_factory import close_app, create_app
from tests.polling import poll
from tests.tasks import SECRET, DeclaredStepTask, StepErrorTask


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


class Boom(Exception):
    pass


def by_key(snap: dict) -> dict[str, dict]:
    return {s["key"]: s for s in snap["steps"]}


def test_declared_steps_are_pending_from_the_first_snapshot() -> None:
    rec = StepRecorder([("fetch", "Fetch data"), (2, "Transform"), ("save", "Save")])
    snap = rec.snapshot()
    assert [s["key"] for s in snap["steps"]] == ["fetch", "2", "save"]
    assert {s["state"] for s in snap["steps"]} == {"pending"}
    assert all(s["depth"] == 0 and s["duration"] is None for s in snap["steps"])
    assert snap["steps_summary"] == "0 of 3 steps finished"
    assert snap["messages"] == []
    json.dumps(snap)


def test_plain_names_can_be_declared_and_matched_by_name() -> None:
    clock = FakeClock()
    rec = StepRecorder(["one", "two"], clock=clock)
    with rec.step("two"):
        pass
    steps = by_key(rec.snapshot())
    assert steps["two"]["state"] == "done"
    assert list(steps) == ["one", "two"]


def test_nested_steps_get_depth_and_follow_their_parent() -> None:
    clock = FakeClock()
    rec = StepRecorder([("a", "A"), ("b", "B")], clock=clock)
    with rec.step("Loose"):
        pass
    with rec.step("A", key="a"):
        with rec.step("A.1"), rec.step("A.1.x"):
            pass
        with rec.step("A.2"):
            pass
    with rec.step("B", key="b"):
        pass
    snap = rec.snapshot()
    order = [(s["key"], s["depth"]) for s in snap["steps"]]
    assert order == [("a", 0), ("A.1", 1), ("A.1.x", 2), ("A.2", 1), ("b", 0), ("Loose", 0)]
    assert {s["state"] for s in snap["steps"]} == {"done"}
    assert snap["steps_summary"] == "6 of 6 steps finished"


def test_durations_come_from_the_clock_and_grow_while_running() -> None:
    clock = FakeClock(100.0)
    rec = StepRecorder(clock=clock)
    with rec.step("outer"):
        clock.tick(1.25)
        with rec.step("inner"):
            clock.tick(0.5)
            running = by_key(rec.snapshot())
            assert running["outer"]["state"] == "running"
            assert running["outer"]["duration"] == 1.75
            assert running["outer"]["ended_at"] is None
            assert running["inner"]["duration"] == 0.5
            clock.tick(0.0004)
    steps = by_key(rec.snapshot())
    assert steps["inner"]["started_at"] == 101.25
    assert steps["inner"]["duration"] == 0.5
    assert steps["outer"]["started_at"] == 100.0
    assert steps["outer"]["ended_at"] == pytest.approx(101.7504)
    assert steps["outer"]["duration"] == 1.75


def test_failure_with_continue_on_error_is_recorded_and_execution_goes_on() -> None:
    rec = StepRecorder(clock=FakeClock())
    error = Boom("disk full")
    reached = False
    with rec.step("copy", continue_on_error=True):
        raise error
    reached = True
    assert reached
    snap = rec.snapshot()
    step = by_key(snap)["copy"]
    assert step["state"] == "failed"
    assert step["error"] == {"type": "Boom", "message": "disk full", "user_facing": False}
    assert rec.latest_exception is error
    assert snap["steps_summary"] == "1 of 1 step finished, 1 failed"
    json.dumps(snap)


def test_failure_without_continue_propagates_and_is_recorded_on_every_level() -> None:
    rec = StepRecorder(clock=FakeClock())
    with pytest.raises(Boom), rec.step("outer"), rec.step("inner"):
        raise Boom("bad row")
    steps = by_key(rec.snapshot())
    assert steps["inner"]["state"] == "failed"
    assert steps["outer"]["state"] == "failed"
    assert steps["outer"]["error"] == {"type": "Boom", "message": "bad row", "user_facing": False}


def test_continue_on_error_inside_keeps_the_outer_step_going() -> None:
    rec = StepRecorder(clock=FakeClock())
    with rec.step("outer"):
        with rec.step("inner", continue_on_error=True):
            raise Boom("skip me")
        rec.update_step("after the failure")
    steps = by_key(rec.snapshot())
    assert steps["inner"]["state"] == "failed"
    assert steps["outer"]["state"] == "done"
    assert steps["outer"]["detail"] == "after the failure"


def test_raise_latest_exception_reraises_the_same_object() -> None:
    rec = StepRecorder(clock=FakeClock())
    rec.raise_latest_exception()  # nothing recorded: no-op
    error = Boom("later")
    with rec.step("tolerant", continue_on_error=True):
        raise error
    with pytest.raises(Boom) as caught:
        rec.raise_latest_exception()
    assert caught.value is error


def test_base_exceptions_are_recorded_but_never_swallowed() -> None:
    rec = StepRecorder(clock=FakeClock())
    with pytest.raises(KeyboardInterrupt), rec.step("interrupted", continue_on_error=True):
        raise KeyboardInterrupt
    assert by_key(rec.snapshot())["interrupted"]["state"] == "failed"


def test_start_update_end_in_sequence() -> None:
    clock = FakeClock(0.0)
    rec = StepRecorder([("load", "Load"), ("check", "Check")], clock=clock)
    rec.start_step("load")
    rec.update_step("file 1 of 3")
    clock.tick(2)
    rec.start_step("check")  # ends "load" as done
    clock.tick(1)
    rec.start_step("extra", "Extra work")
    rec.update_step("halfway", key="check")
    rec.end_step(error=Boom("nope"))
    steps = by_key(rec.snapshot())
    assert steps["load"]["state"] == "done"
    assert steps["load"]["duration"] == 2.0
    assert steps["load"]["detail"] == "file 1 of 3"
    assert steps["check"]["state"] == "done"
    assert steps["check"]["detail"] == "halfway"
    assert steps["extra"] == {
        "key": "extra",
        "name": "Extra work",
        "state": "failed",
        "depth": 0,
        "started_at": 3.0,
        "ended_at": 3.0,
        "duration": 0.0,
        "detail": None,
        "error": {"type": "Boom", "message": "nope", "user_facing": False},
    }


def test_start_step_nests_inside_a_with_step_and_closes_with_it() -> None:
    rec = StepRecorder(clock=FakeClock())
    with rec.step("outer"):
        rec.start_step("one", "One")
        rec.start_step("two", "Two")
    snap = rec.snapshot()
    assert [(s["key"], s["depth"], s["state"]) for s in snap["steps"]] == [
        ("outer", 0, "done"),
        ("one", 1, "done"),
        ("two", 1, "done"),
    ]


def test_end_step_by_key_and_rerun_clears_the_old_outcome() -> None:
    clock = FakeClock(0.0)
    rec = StepRecorder(clock=clock)
    rec.start_step(7, "Seven")
    rec.end_step(7, error=Boom("first try"))
    clock.tick(5)
    rec.start_step(7)
    step = by_key(rec.snapshot())["7"]
    assert step["state"] == "running"
    assert step["started_at"] == 5.0
    assert step["ended_at"] is None and step["error"] is None
    rec.end_step("7")
    assert by_key(rec.snapshot())["7"]["state"] == "done"


def test_invalid_calls_give_clear_errors() -> None:
    rec = StepRecorder(["known"], clock=FakeClock())
    with pytest.raises(ValueError, match="needs a name"):
        rec.start_step("mystery")
    with pytest.raises(ValueError, match="no step is running"):
        rec.update_step("detail")
    with pytest.raises(ValueError, match="no step is running"):
        rec.end_step()
    with pytest.raises(ValueError, match="no step with key 'ghost'"):
        rec.update_step("detail", key="ghost")
    with pytest.raises(ValueError, match="not running"):
        rec.end_step("known")
    with pytest.raises(ValueError, match="already running"), rec.step("known"), rec.step("known"):
        pass
    with pytest.raises(ValueError, match="more than once"):
        StepRecorder(["a", "a"])
    with pytest.raises(TypeError, match="declared step"):
        StepRecorder([("a", "b", "c")])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="max_messages"):
        StepRecorder(max_messages=-1)


def test_message_log_keeps_the_newest() -> None:
    clock = FakeClock(0.0)
    rec = StepRecorder(max_messages=3, clock=clock)
    for n in range(5):
        rec.notify(f"message {n}")
        clock.tick(1)
    messages = rec.snapshot()["messages"]
    assert [m["message"] for m in messages] == ["message 2", "message 3", "message 4"]
    assert messages[0]["time"] == "1970-01-01T00:00:02+00:00"


def test_urgent_for_state_changes_dirty_for_everything() -> None:
    rec = StepRecorder(["a"], clock=FakeClock())
    assert not rec.urgent and not rec.dirty
    rec.start_step("a")
    assert rec.urgent and rec.dirty
    rec.snapshot()
    assert not rec.urgent and not rec.dirty
    rec.update_step("busy")
    assert rec.dirty and not rec.urgent
    rec.snapshot()
    rec.notify("hello")
    assert rec.dirty and not rec.urgent
    rec.snapshot()
    rec.end_step()
    assert rec.urgent and rec.dirty


def test_finish_closes_running_steps_as_done_or_failed() -> None:
    rec = StepRecorder(["later"], clock=FakeClock())
    rec.start_step("a", "A")
    rec.finish()
    assert by_key(rec.snapshot())["a"]["state"] == "done"

    rec = StepRecorder(["later"], clock=FakeClock())
    rec.start_step("a", "A")
    error = Boom("job died")
    rec.finish(failed_with=error)
    snap = rec.snapshot()
    steps = by_key(snap)
    assert steps["a"]["state"] == "failed"
    assert steps["a"]["error"] == {"type": "Boom", "message": "job died", "user_facing": False}
    assert steps["later"]["state"] == "pending"
    assert snap["steps_summary"] == "1 of 2 steps finished, 1 failed"
    json.dumps(snap)


def test_a_declared_step_keeps_its_name_however_it_is_started() -> None:
    for start in (
        lambda rec: rec.step("render").__enter__(),
        lambda rec: rec.step("Other words", key="render").__enter__(),
        lambda rec: rec.start_step("render", "Other words"),
        lambda rec: rec.start_step("render"),
    ):
        rec = StepRecorder([("render", "Render the rows")], clock=FakeClock())
        start(rec)
        assert [(s["key"], s["name"], s["state"]) for s in rec.snapshot()["steps"]] == [
            ("render", "Render the rows", "running")
        ]


def test_a_step_that_was_not_declared_takes_the_name_of_each_start() -> None:
    rec = StepRecorder(clock=FakeClock())
    rec.start_step("load", "Load")
    rec.start_step("load", "Load again")
    assert by_key(rec.snapshot())["load"]["name"] == "Load again"


def test_job_failed_step_errors_are_stored_as_meant_for_the_user() -> None:
    rec = StepRecorder(clock=FakeClock())
    with rec.step("check", continue_on_error=True):
        raise JobFailed("No header row")
    assert by_key(rec.snapshot())["check"]["error"] == {
        "type": "JobFailed",
        "message": "No header row",
        "user_facing": True,
    }


def test_each_step_failure_is_reported_once_and_the_jobs_own_failure_not_at_all() -> None:
    reported: list[tuple[str, str]] = []
    rec = StepRecorder(
        clock=FakeClock(), on_failure=lambda key, exc: reported.append((key, str(exc)))
    )
    with rec.step("tolerant", continue_on_error=True):
        raise Boom("one")
    with pytest.raises(Boom), rec.step("outer"), rec.step("inner"):
        raise Boom("two")  # fails both steps: one report
    rec.start_step("left running", "Left running")
    rec.finish(failed_with=Boom("the job's own"))
    assert reported == [("tolerant", "one"), ("inner", "two")]
    assert by_key(rec.snapshot())["left running"]["state"] == "failed"


# -- on a real worker: step errors and declared names, as users see them --------------


def _ready(client, task_id):
    return strict.wait_ready(client, task_id)


def _step(document, name="Load"):
    return next(step for step in document["steps"] if step["name"] == name)


@pytest.mark.usefixtures("celery_worker")
@pytest.mark.parametrize("how", ["continue", "end_step", "raise"])
def test_a_step_error_shows_the_generic_message_and_error_id(app, client, token, how):
    with app.app_context():
        result = StepErrorTask.delay_or_fail(token=token, how=how)
    document = _ready(client, result.id)
    assert document["state"] == ("FAILURE" if how == "raise" else "SUCCESS")
    error_id = error_id_for(result.id)
    assert _step(document)["error"] == {
        "type": "RuntimeError",
        "message": GENERIC_STEP_FAILURE.format(error_id=error_id),
        "error_id": error_id,
    }
    seen = [
        client.get(f"/jobtastic/status/{result.id}").get_data(as_text=True),
        client.get(f"/jobtastic/status?ids={result.id}").get_data(as_text=True),
        json.dumps(strict.stream(client, result.id)),
    ]
    assert not any("hunter2" in text for text in seen)


@pytest.mark.usefixtures("celery_worker")
def test_the_worker_log_has_the_step_error_under_its_error_id(app, client, token, celery_worker):
    with app.app_context():
        result = StepErrorTask.delay_or_fail(token=token, how="continue")
    _ready(client, result.id)
    line = f"step 'Load' failed, error id {error_id_for(result.id)}: RuntimeError: {SECRET}"
    strict.wait_logged(celery_worker, line)


@pytest.mark.usefixtures("celery_worker")
def test_a_job_failed_step_shows_its_message(app, client, token):
    with app.app_context():
        result = StepErrorTask.delay_or_fail(token=token, how="user_facing")
    error = _step(_ready(client, result.id))["error"]
    assert error["type"] == "JobFailed" and error["message"] == "The file has no header row"


@pytest.mark.usefixtures("celery_worker")
def test_expose_errors_on_the_web_side_shows_the_raw_step_message(app, token):
    """The worker stores the message; the web process's setting decides what is shown."""
    with app.app_context():
        result = StepErrorTask.delay_or_fail(token=token, how="continue")
    _ready(app.test_client(), result.id)
    exposing = create_app(JOBTASTIC_EXPOSE_ERRORS=True)
    try:
        document = strict.status(exposing.test_client(), result.id)
    finally:
        close_app(exposing)
    assert _step(document)["error"]["message"] == SECRET


@pytest.mark.usefixtures("celery_worker")
@pytest.mark.parametrize("how", ["with", "with_key", "start"])
def test_a_declared_step_keeps_its_declared_name_however_it_is_started(app, client, token, how):
    with app.app_context():
        result = DeclaredStepTask.delay_or_fail(token=token, how=how)
    _, running = poll(
        client,
        result.id,
        lambda d: d["state"] == "PROGRESS" and d["steps"][0]["state"] == "running",
    )
    final = _ready(client, result.id)
    for document in (running, final):
        assert [(s["key"], s["name"]) for s in document["steps"]] == [("render", "Render the rows")]
    assert final["steps"][0]["state"] == "done"
