"""The pytest plugin as a user's suite uses it: a small project run by ``pytester``.

Each test writes the user's tests into the project and runs them in a
subprocess, where the plugin comes from the installed ``pytest11`` entry
point, as in any project that installs flask-jobtastic.
"""

from __future__ import annotations

import textwrap
import uuid

import pytest

from tests.servers import RedisServer

pytest_plugins = ["pytester"]

APP = """
import os

from flask import Flask, jsonify, request

from flask_jobtastic import Jobtastic

jobtastic = Jobtastic()


def create_app(config=None):
    app = Flask(__name__)
    if os.environ.get("MYAPP_BROKER_URL"):
        app.config["CELERY"] = {
            "broker_url": os.environ["MYAPP_BROKER_URL"],
            "result_backend": os.environ["MYAPP_BACKEND_URL"],
            "task_default_queue": os.environ["MYAPP_QUEUE"],
        }
    app.config.update(config or {})
    jobtastic.init_app(app)

    from .tasks import CountTask, SlowTask

    @app.get("/count")
    def count():
        n = request.args.get("n", 3, type=int)
        fail_at = request.args.get("fail_at", None, type=int)
        send = CountTask.delay_or_eager if request.args.get("eager") else CountTask.delay_or_fail
        return jsonify(task_id=send(n=n, fail_at=fail_at).id)

    @app.get("/slow")
    def slow():
        grow = request.args.get("grow", 0, type=int)
        return jsonify(task_id=SlowTask.delay_or_fail(items=10, grow=grow).id)

    return app
"""

TASKS = '''
from flask_jobtastic import JobFailed, JobtasticTask


class CountTask(JobtasticTask):
    """Loads, then counts n items: declared steps, a message and item counts."""

    herd_avoidance_timeout = 10
    significant_kwargs = ["n", "fail_at"]
    steps = [("load", "Load the items"), ("count", "Count them")]

    def calculate_result(self, n, fail_at=None):
        with self.step("load"):
            self.notify(f"{n} items to count")
        with self.step("count"):
            self.set_amount(n)
            for index in range(n):
                if index == fail_at:
                    raise JobFailed(f"item {index} is broken")
                self.add_one_success(f"item {index}")
        return {"counted": n}


class SlowTask(JobtasticTask):
    """Progress item by item; with grow, the total grows half-way (the bar goes back)."""

    herd_avoidance_timeout = 10
    significant_kwargs = ["items", "grow"]

    def calculate_result(self, items, grow=0):
        total = items
        for index in range(items):
            if grow and index == items // 2:
                total += grow
            self.update_progress(index + 1, total)
        return items
'''

CONFTEST = """
import pytest

from myapp import create_app


@pytest.fixture
def app():
    return create_app({"TESTING": True, "JOBTASTIC_PROGRESS_INTERVAL": 0})


@pytest.fixture
def client(app):
    return app.test_client()
"""

#: The user's suite runs with warnings as errors, but for Celery's own use of a
#: deprecated redis-py call (see pyproject.toml).
STRICT = ("-p", "no:cacheprovider", "-W", "error", "-W", "ignore:Call to deprecated setex")


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """The user's project: an app factory, two jobs, an ``app`` fixture."""
    pytester.makepyfile(**{"myapp/__init__": APP, "myapp/tasks": TASKS, "conftest": CONFTEST})
    return pytester


def run_user_tests(project: pytest.Pytester, source: str) -> pytest.RunResult:
    project.makepyfile(test_user=textwrap.dedent(source))
    return project.runpytest_subprocess(*STRICT)


def test_recorder_gives_every_document_in_order(project: pytest.Pytester) -> None:
    result = run_user_tests(
        project,
        """
        from flask_jobtastic.testing import assert_progress, percents

        def test_count(client, jobtastic_recorder):
            task_id = client.get("/count?n=3").json["task_id"]
            documents = jobtastic_recorder.documents(task_id)
            assert [d["state"] for d in documents] == ["PENDING"] + ["PROGRESS"] * 10 + ["SUCCESS"]
            assert percents(documents) == [0, 0, 0, 0, 0, 0, 0, 33.3, 66.7, 100, 100]
            # each write as the browser would have read it: steps start and end in turn
            assert [[s["state"] for s in d["steps"]] for d in documents[1:6]] == [
                ["pending", "pending"],
                ["running", "pending"],
                ["running", "pending"],  # the message, written with the step running
                ["done", "pending"],
                ["done", "running"],
            ]
            assert [len(d["messages"]) for d in documents[2:4]] == [0, 1]
            assert documents[3]["messages"][0]["message"] == "3 items to count"
            assert [d["counts"]["success"] for d in documents[6:10]] == [0, 1, 2, 3]
            assert [[s["state"] for s in d["steps"]] for d in documents[-2:]] == [["done"] * 2] * 2
            assert documents[-1]["result"] == {"counted": 3}
            assert documents[-1]["counts"]["succeeded"] == ["item 0", "item 1", "item 2"]
            assert_progress(documents, steps=["Load the items", "Count them"])
            # the last document is what the status endpoint answers now
            assert client.get(f"/jobtastic/status/{task_id}").json == documents[-1]

        def test_a_failure_is_recorded_as_the_user_sees_it(client, jobtastic_recorder):
            task_id = client.get("/count?n=3&fail_at=1").json["task_id"]
            documents = jobtastic_recorder.documents(task_id)
            assert documents[-1]["error"]["message"] == "item 1 is broken"
            assert documents[-1]["counts"]["success"] == 1
            assert_progress(documents, state="FAILURE")
        """,
    )
    result.assert_outcomes(passed=2)


def test_app_testing_runs_jobs_synchronously(project: pytest.Pytester) -> None:
    result = run_user_tests(
        project,
        """
        import pytest

        from myapp import create_app

        def status(app, url):
            client = app.test_client()
            task_id = client.get(url).json["task_id"]
            return client.get(f"/jobtastic/status/{task_id}").json

        def test_testing_app_has_the_result_at_once(app):
            assert status(app, "/count?n=2")["result"] == {"counted": 2}
            assert app.extensions["jobtastic"].embedded_worker is None  # no thread needed

        def test_without_testing_nothing_changes():
            app = create_app({"JOBTASTIC_EMBEDDED_WORKER": False})
            assert status(app, "/count?n=2")["state"] == "PENDING"

        class TestToldOtherwise:
            @pytest.fixture
            def app(self):
                return create_app({"TESTING": True, "JOBTASTIC_RUN_SYNCHRONOUSLY": False,
                                   "JOBTASTIC_EMBEDDED_WORKER": False})

            def test_it_only_queues(self, app):
                assert status(app, "/count?n=2")["state"] == "PENDING"

            def test_jobtastic_app_runs_jobs_synchronously_all_the_same(self, jobtastic_app):
                assert status(jobtastic_app, "/count?n=2")["state"] == "SUCCESS"
        """,
    )
    result.assert_outcomes(passed=4)


def test_broker_down_both_ways(project: pytest.Pytester) -> None:
    result = run_user_tests(
        project,
        """
        from flask_jobtastic.testing import assert_progress, broker_down

        def test_delay_or_fail_fails_cleanly(client, jobtastic_recorder, jobtastic_broker_down):
            task_id = client.get("/count?n=2").json["task_id"]
            assert jobtastic_recorder.states(task_id) == ["PENDING", "FAILURE"]
            document = client.get(f"/jobtastic/status/{task_id}").json
            assert document["error"]["type"] == "BrokerUnavailable"
            assert jobtastic_broker_down.startswith("redis://127.0.0.1:")

        def test_delay_or_eager_runs_here_then_the_broker_is_back(app, client, jobtastic_recorder):
            with broker_down(app):
                down = client.get("/count?n=2&eager=1").json["task_id"]
                failed = client.get("/count?n=3").json["task_id"]
            assert_progress(jobtastic_recorder.documents(down), steps=["Count them"])
            assert jobtastic_recorder.states(failed) == ["PENDING", "FAILURE"]
            back = client.get("/count?n=4").json["task_id"]
            assert client.get(f"/jobtastic/status/{back}").json["result"] == {"counted": 4}
        """,
    )
    result.assert_outcomes(passed=2)


def test_the_clock_drives_time_remaining(project: pytest.Pytester) -> None:
    result = run_user_tests(
        project,
        """
        def test_estimate(client, jobtastic_recorder, jobtastic_clock):
            jobtastic_clock.tick = 1.0  # every reading of the meter: one second later
            task_id = client.get("/slow").json["task_id"]
            documents = jobtastic_recorder.documents(task_id)
            progress = [d for d in documents if d["state"] == "PROGRESS"]
            # started at 0 s, the first item at 2 s: 0.5 items/s, 9 items left, 18 s;
            # then one item a second, smoothed (JOBTASTIC_PROGRESS_SMOOTHING 0.3)
            assert [d["time_remaining"] for d in progress[:4]] == [-1, 18.0, 12.3, 9.3]
            assert [d["rate"] for d in progress[1:4]] == [0.5, 0.65, 0.755]
            assert progress[-1]["time_remaining"] == 0

        def test_advance_moves_the_clock(jobtastic_clock):
            before = jobtastic_clock()
            jobtastic_clock.advance(30)
            assert jobtastic_clock() == before + 30
        """,
    )
    result.assert_outcomes(passed=2)


def test_wrong_progress_fails_the_users_test_readably(project: pytest.Pytester) -> None:
    result = run_user_tests(
        project,
        """
        from flask_jobtastic.testing import assert_progress

        def test_goes_backwards(client, jobtastic_recorder):
            task_id = client.get("/slow?grow=10").json["task_id"]
            assert_progress(jobtastic_recorder.documents(task_id))

        def test_never_reaches_100(client, jobtastic_recorder):
            task_id = client.get("/count?n=3&fail_at=2").json["task_id"]
            assert_progress(jobtastic_recorder.documents(task_id))

        def test_a_step_is_missing(client, jobtastic_recorder):
            task_id = client.get("/count?n=3").json["task_id"]
            assert_progress(jobtastic_recorder.documents(task_id), steps=["Upload"])
        """,
    )
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: progress went backwards: 50.0 then 30.0 (progress seen: [[]0, 0.0, "
            "10.0, 20.0, 30.0, 40.0, 50.0, 30.0, *",
            "*AssertionError: progress never reached the end: it stopped at 66.7 and the job "
            "ended in FAILURE (JobFailed: item 2 is broken), not SUCCESS (progress seen: *66.7])",
            "*AssertionError: steps never shown: [[]'Upload'] (steps seen: "
            "[[]'Load the items', 'Count them'])",
        ],
        consecutive=False,
    )


def test_worker_fixture_runs_jobs_on_the_users_servers(
    project: pytest.Pytester, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MYAPP_BROKER_URL", redis_server.url)
    monkeypatch.setenv("MYAPP_BACKEND_URL", redis_server.url.replace("/0", "/1"))
    monkeypatch.setenv("MYAPP_QUEUE", f"plugin-{uuid.uuid4().hex}")  # no other worker's
    result = run_user_tests(
        project,
        """
        import threading

        from flask_jobtastic.testing import assert_progress

        def test_a_worker_thread_runs_it(app, client, jobtastic_recorder, jobtastic_worker):
            assert not app.extensions["jobtastic"].celery.conf.task_always_eager
            task_id = client.get("/count?n=3").json["task_id"]
            documents = jobtastic_recorder.wait(task_id, timeout=20)
            assert documents[0]["state"] == "PENDING"
            assert_progress(documents, steps=["Load the items", "Count them"])
            assert client.get(f"/jobtastic/status/{task_id}").json == documents[-1]

        def test_without_it_the_same_app_runs_jobs_here(app, client, jobtastic_recorder):
            assert app.extensions["jobtastic"].celery.conf.task_always_eager
            task_id = client.get("/count?n=3").json["task_id"]
            assert_progress(jobtastic_recorder.documents(task_id))
        """,
    )
    result.assert_outcomes(passed=2)


def test_the_plugin_is_opt_in(pytester: pytest.Pytester) -> None:
    """A project without an ``app`` fixture is untouched until it asks for one of ours."""
    pytester.makepyfile(
        test_other="""
        def test_unrelated():
            assert True

        def test_asks_for_a_fixture(jobtastic_recorder):
            pass
        """
    )
    result = pytester.runpytest_subprocess(*STRICT)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fixture 'app' not found*"])
