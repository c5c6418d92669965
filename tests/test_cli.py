"""``flask jobtastic cleanup`` and ``flask jobtastic clear``, through Flask's CLI runner.

Most tests fill an in-memory registry through its own API (no worker needed,
and ``clear`` cannot wipe the records other tests keep on the shared Redis);
one runs real jobs on the worker and the Redis registry, as a deployment does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_jobtastic.cli import jobtastic_cli
from flask_jobtastic.registry import Registry
from tests.app_factory import close_app, create_app
from tests.polling import poll
from tests.tasks import TrackedTask

ALICE = {"X-User": "alice"}
POST = {"X-Requested-With": "test"}
TASK = "tests.tasks.TrackedTask"


@pytest.fixture
def memory_app() -> Iterator[Flask]:
    """The test app with an in-memory registry; seen jobs expire at once."""
    app = create_app(JOBTASTIC_REGISTRY="memory", JOBTASTIC_REGISTRY_SEEN_TTL=0)
    yield app
    close_app(app)


def registry_of(app: Flask) -> Registry:
    registry = app.extensions["jobtastic"].registry
    assert isinstance(registry, Registry)
    return registry


def add_jobs(registry: Registry, *, seen: int = 0, unseen: int = 0, running: int = 0) -> dict:
    """Record jobs of alice's: finished and seen, finished and unseen, still running."""
    made: dict[str, list[str]] = {"seen": [], "unseen": [], "running": []}
    for kind, count in (("seen", seen), ("unseen", unseen), ("running", running)):
        for _ in range(count):
            job_id = str(uuid.uuid4())
            registry.record_sent(job_id, TASK, owner="alice")
            registry.record_state(job_id, "running" if kind == "running" else "succeeded")
            if kind == "seen":
                registry.mark_seen(job_id, "alice")
            made[kind].append(job_id)
    return made


def test_cleanup_echoes_how_many_finished_jobs_it_removed(memory_app: Flask) -> None:
    registry = registry_of(memory_app)
    jobs = add_jobs(registry, seen=2, unseen=1, running=1)
    time.sleep(0.01)  # seen more than JOBTASTIC_REGISTRY_SEEN_TTL (0 s) ago
    runner = memory_app.test_cli_runner()

    result = runner.invoke(args=["jobtastic", "cleanup"])
    assert result.exit_code == 0, result.output
    assert result.output == "Removed 2 finished job record(s).\n"
    assert [registry.get(job_id) for job_id in jobs["seen"]] == [None, None]
    assert registry.get(jobs["unseen"][0]) is not None  # unseen: kept for a week
    assert registry.get(jobs["running"][0]) is not None

    again = runner.invoke(args=["jobtastic", "cleanup"])
    assert again.exit_code == 0 and again.output == "Removed 0 finished job record(s).\n"


def test_clear_asks_first_and_keeps_everything_when_told_no(memory_app: Flask) -> None:
    registry = registry_of(memory_app)
    jobs = add_jobs(registry, seen=1, unseen=1, running=1)
    runner = memory_app.test_cli_runner()

    refused = runner.invoke(args=["jobtastic", "clear"], input="n\n")
    assert refused.exit_code == 1
    assert "Delete every job record? [y/N]" in refused.output
    assert "Aborted" in refused.output and "Removed" not in refused.output
    assert all(registry.get(job_id) for ids in jobs.values() for job_id in ids)

    confirmed = runner.invoke(args=["jobtastic", "clear"], input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert confirmed.output.endswith("Removed 3 job record(s).\n")
    assert [registry.get(job_id) for ids in jobs.values() for job_id in ids] == [None] * 3


def test_clear_with_yes_does_not_ask(memory_app: Flask) -> None:
    registry = registry_of(memory_app)
    add_jobs(registry, unseen=2, running=2)
    result = memory_app.test_cli_runner().invoke(args=["jobtastic", "clear", "--yes"])
    assert result.exit_code == 0, result.output
    assert result.output == "Removed 4 job record(s).\n"  # no question asked
    assert registry.clear() == 0


@pytest.mark.parametrize("command", [["cleanup"], ["clear", "--yes"]], ids=["cleanup", "clear"])
def test_commands_say_so_when_the_registry_is_off(command: list[str]) -> None:
    app = create_app(JOBTASTIC_REGISTRY=None)
    try:
        assert app.extensions["jobtastic"].registry is None
        result = app.test_cli_runner().invoke(args=["jobtastic", *command])
    finally:
        close_app(app)
    assert result.exit_code == 1
    assert "Error: The job registry is off: set JOBTASTIC_REGISTRY." in result.output


@pytest.mark.parametrize("command", [["cleanup"], ["clear", "--yes"]], ids=["cleanup", "clear"])
def test_commands_say_so_when_the_app_has_no_extension(command: list[str]) -> None:
    app = Flask(__name__)  # the commands registered by hand, without Jobtastic(app)
    app.cli.add_command(jobtastic_cli)
    result = app.test_cli_runner().invoke(args=["jobtastic", *command])
    assert result.exit_code == 1
    assert "This app does not use flask-jobtastic (no Jobtastic(app))." in result.output


def wait_ready(client: FlaskClient, task_id: str, headers: dict[str, str]) -> dict:
    return poll(client, task_id, lambda document: document["ready"], headers=headers)[1]


# Moved from test_rich_progress.py: real jobs, the Redis registry, a real "seen".
@pytest.mark.usefixtures("celery_worker")
def test_cleanup_command_removes_seen_finished_jobs_only(token: str) -> None:
    app = create_app(owner_header="X-User", JOBTASTIC_REGISTRY_SEEN_TTL=0.5)
    try:
        client = app.test_client()
        with app.test_request_context(headers=ALICE):
            seen = TrackedTask.delay_or_fail(token=token, seconds=0.1)
            unseen = TrackedTask.delay_or_fail(token=token + "-u", seconds=0.1)
        wait_ready(client, seen.id, ALICE)
        wait_ready(client, unseen.id, ALICE)
        time.sleep(0.3)
        client.post(f"/jobtastic/jobs/{seen.id}/seen", headers={**ALICE, **POST})
        time.sleep(0.7)
        output = app.test_cli_runner().invoke(args=["jobtastic", "cleanup"])
        assert "Removed" in output.output
        registry = app.extensions["jobtastic"].registry
        assert registry.get(seen.id) is None
        assert registry.get(unseen.id) is not None
    finally:
        close_app(app)
