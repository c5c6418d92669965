"""The ``flask jobtastic`` commands, through Flask's CLI runner.

The registry commands (``cleanup``, ``clear``, ``list``) mostly run on an
in-memory registry filled through its own API (no worker needed, and
``clear`` cannot wipe the records other tests keep on the shared Redis); the
job commands (``status``, ``cancel``, ``clear-locks``, ``clear-cache``) run
real jobs on the session's worker, Redis and memcached, as a deployment does;
``worker`` is started for real, as ``flask ... jobtastic worker``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import Result
from flask import Flask
from flask.testing import FlaskClient

from flask_jobtastic import herd, keys
from flask_jobtastic.cli import jobtastic_cli
from flask_jobtastic.registry import Registry
from tests.app_factory import close_app, create_app
from tests.polling import poll
from tests.rig import ARTIFACTS, Servers, WorkerProcess
from tests.tasks import CancellableTask, CountedTask, SilentTask, TrackedTask, runs, ticks

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


REGISTRY_COMMANDS = [["cleanup"], ["clear", "--yes"], ["clear"], ["list"], ["list", "--owner", "a"]]


@pytest.mark.parametrize("command", REGISTRY_COMMANDS, ids=" ".join)
def test_commands_say_so_when_the_registry_is_off(command: list[str]) -> None:
    app = create_app(JOBTASTIC_REGISTRY=None)
    try:
        assert app.extensions["jobtastic"].registry is None
        result = app.test_cli_runner().invoke(args=["jobtastic", *command])
    finally:
        close_app(app)
    assert result.exit_code == 1
    assert "Error: The job registry is off: set JOBTASTIC_REGISTRY." in result.output


ANY_ID = "0b8f0d39-9a38-4c55-9d7e-4a1c7b0f6a11"
EVERY_COMMAND = REGISTRY_COMMANDS + [
    ["status", ANY_ID],
    ["cancel", ANY_ID],
    ["clear-locks"],
    ["clear-cache", "--task", TASK, "--args", "{}"],
    ["worker", "--pool=solo"],
]


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=" ".join)
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


def cli(app: Flask, *args: str, **kwargs: Any) -> Result:
    return app.test_cli_runner().invoke(args=["jobtastic", *args], **kwargs)


# -- help -----------------------------------------------------------------------------


def test_every_command_has_help(memory_app: Flask) -> None:
    group = cli(memory_app, "--help")
    assert group.exit_code == 0, group.output
    names = sorted(jobtastic_cli.commands)
    assert names == [
        "cancel",
        "cleanup",
        "clear",
        "clear-cache",
        "clear-locks",
        "list",
        "status",
        "worker",
    ]
    for name in names:
        command = jobtastic_cli.commands[name]
        assert command.help and command.help.strip(), name
        assert name in group.output
        shown = cli(memory_app, name, "--help")
        assert shown.exit_code == 0, shown.output
        assert shown.output.startswith("Usage: ")
        assert f" jobtastic {name} [OPTIONS]" in shown.output.splitlines()[0]
        assert command.help.split("\n")[0][:40] in shown.output


# -- list ------------------------------------------------------------------------------


def test_list_filters_by_owner_and_state(memory_app: Flask) -> None:
    registry = registry_of(memory_app)
    alice = add_jobs(registry, seen=1, unseen=1, running=1)
    bob_running = str(uuid.uuid4())
    registry.record_sent(bob_running, TASK, owner="bob", description="Bob's export")
    registry.record_state(bob_running, "running", progress=42.5)

    def listed(*options: str) -> list[list[str]]:
        result = cli(memory_app, "list", *options)
        assert result.exit_code == 0, result.output
        return [line.split(None, 3) for line in result.stdout.splitlines()]

    everything = listed()
    assert sorted(line[0] for line in everything) == sorted(
        [*alice["seen"], *alice["unseen"], *alice["running"], bob_running]
    )
    assert everything[0] == [bob_running, "running", "42.5%", "Bob's export"]  # newest first
    alices_running = listed("--owner", "alice", "--state", "running")
    assert [line[0] for line in alices_running] == alice["running"]
    assert {line[0] for line in listed("--state", "running")} == {bob_running, *alice["running"]}
    assert {line[0] for line in listed("--owner", "alice")} == {
        *alice["seen"],
        *alice["unseen"],
        *alice["running"],
    }
    assert [line[1:] for line in listed("--owner", "alice", "--state", "succeeded")] == [
        ["succeeded", "100.0%", TASK]  # no description: the task's name
    ] * 2
    assert len(listed("--limit", "2")) == 2
    nobody = cli(memory_app, "list", "--owner", "carol")
    assert nobody.exit_code == 0 and nobody.stdout == "" and "No jobs." in nobody.output
    refused = cli(memory_app, "list", "--state", "lost")
    assert refused.exit_code == 2 and "'lost' is not one of" in refused.output


# -- status and cancel, on the worker ---------------------------------------------------


@pytest.fixture
def owned_app() -> Iterator[Flask]:
    """The test app where the X-User header names the current user."""
    app = create_app(owner_header="X-User")
    yield app
    close_app(app)


@pytest.mark.usefixtures("celery_worker")
def test_status_prints_a_finished_jobs_document_whoever_owns_it(
    owned_app: Flask, token: str
) -> None:
    client = owned_app.test_client()
    with owned_app.test_request_context(headers=ALICE):
        job = TrackedTask.delay_or_fail(token=token, seconds=0.1)
    owners_view = wait_ready(client, job.id, ALICE)
    assert owners_view["state"] == "SUCCESS" and owners_view["result"] == token
    assert client.get(f"/jobtastic/status/{job.id}").status_code == 404  # not yours: UNKNOWN

    result = cli(owned_app, "status", job.id)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == owners_view  # the operator sees alice's job


def test_status_of_an_unknown_or_malformed_id(memory_app: Flask) -> None:
    unknown = cli(memory_app, "status", str(uuid.uuid4()))
    assert unknown.exit_code == 1
    assert json.loads(unknown.output)["state"] == "UNKNOWN"
    malformed = cli(memory_app, "status", "not-an-id")
    assert malformed.exit_code == 2
    assert "Invalid value for 'ID': expected a UUID" in malformed.output


@pytest.mark.usefixtures("celery_worker")
def test_cancel_stops_a_running_job_of_any_owner(owned_app: Flask, token: str) -> None:
    client = owned_app.test_client()
    with owned_app.test_request_context(headers=ALICE):
        job = CancellableTask.delay_or_fail(token=token, steps=200, pause=0.05)
    poll(client, job.id, lambda d: d["state"] == "PROGRESS", headers=ALICE)

    result = cli(owned_app, "cancel", job.id)
    assert result.exit_code == 0, result.output
    said, document = result.output.split("\n", 1)
    assert said == f"Asked job {job.id} to stop; the worker confirms it (REVOKED)."
    shown = json.loads(document)  # pending, unless the worker confirmed already
    assert shown.get("cancel_pending") is True or shown["state"] == "REVOKED", shown

    _, stopped = poll(client, job.id, lambda d: d["ready"], headers=ALICE)
    assert stopped["state"] == "REVOKED"
    assert json.loads(cli(owned_app, "status", job.id).output)["state"] == "REVOKED"
    after = ticks(token)
    time.sleep(0.3)
    assert ticks(token) == after < 200  # it really stopped

    again = cli(owned_app, "cancel", job.id)
    assert again.exit_code == 0
    assert again.output == f"Job {job.id} has already ended: REVOKED.\n"
    unknown = cli(owned_app, "cancel", str(uuid.uuid4()))
    assert unknown.exit_code == 1 and "is known to the result backend" in unknown.output


# -- clear-locks and clear-cache --------------------------------------------------------


def cache_key_of(app: Flask, task_class: type, **kwargs: Any) -> str:
    """The key a call made outside a request (no owner) is cached and claimed under."""
    task = app.extensions["jobtastic"].celery.tasks[task_class.name]
    return str(task.cache_key_for((), kwargs))


@pytest.mark.usefixtures("celery_worker")
def test_clear_locks_with_args_frees_a_claim_on_memcached(app: Flask, token: str) -> None:
    cache = app.extensions["jobtastic"].cache_backend
    with app.app_context():
        first = SilentTask.delay_or_fail(token=token, seconds=1.5)
        assert SilentTask.delay_or_fail(token=token, seconds=1.5).id == first.id  # joined
        key = keys.herd_key(cache_key_of(app, SilentTask, token=token))
        assert herd.cache_get(cache, key) == first.id

        args = ["--task", "tests.tasks.SilentTask", "--args", json.dumps({"token": token})]
        result = cli(app, "clear-locks", *args)
        assert result.exit_code == 0, result.output
        assert result.output == (
            f"Deleted the herd claim of tests.tasks.SilentTask (job {first.id}): {key}\n"
        )
        assert herd.cache_get(cache, key) is None
        second = SilentTask.delay_or_fail(token=token, seconds=1.5)  # a run of its own
        assert second.id != first.id
        assert first.get(timeout=15) == second.get(timeout=15) == token
    assert runs(token) == 2

    none_left = cli(app, "clear-locks", *args)
    assert none_left.exit_code == 0
    assert none_left.output.startswith("No herd claim of tests.tasks.SilentTask")


@pytest.mark.usefixtures("celery_worker")
def test_clear_cache_with_args_makes_the_next_call_compute_again(
    owned_app: Flask, token: str
) -> None:
    with owned_app.test_request_context(headers=ALICE):
        first = CountedTask.delay_or_fail(token=token, seconds=0.1)
        assert first.get(timeout=15) == {"value": None, "token": token}
        assert CountedTask.delay_or_fail(token=token).id == first.id  # cached
    args = ["--task", "tests.tasks.CountedTask", "--args", json.dumps({"token": token})]

    not_hers = cli(owned_app, "clear-cache", *args)  # alice's call is keyed per owner
    assert not_hers.exit_code == 0, not_hers.output
    assert not_hers.stdout.startswith("No cached result of tests.tasks.CountedTask")
    assert "give --owner" in not_hers.output

    cleared = cli(owned_app, "clear-cache", *args, "--owner", "alice")
    assert cleared.exit_code == 0, cleared.output
    assert cleared.output.startswith(
        f"Deleted the cached result of tests.tasks.CountedTask (job {first.id}): jobtastic:"
    )
    with owned_app.test_request_context(headers=ALICE):
        second = CountedTask.delay_or_fail(token=token, seconds=0.1)
        assert second.id != first.id
        assert second.get(timeout=15) == {"value": None, "token": token}
    assert runs(token) == 2


def test_clear_without_args_on_memcached_says_why_not(app: Flask) -> None:
    for command in ("clear-locks", "clear-cache"):
        for task in ([], ["--task", "tests.tasks.CountedTask"]):
            result = cli(app, command, *task)
            assert result.exit_code == 1
            assert "Error: The cache (PyMemcacheCache) cannot list its keys" in result.output
            assert "give --task NAME and --args JSON" in result.output


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--args", "{}"], "--args needs --task."),
        (["--task", "tests.tasks.CountedTask", "--owner", "a"], "--owner needs --args."),
        (["--task", "nope", "--args", "{}"], "no JobtasticTask named 'nope'; known: "),
        (["--task", "tests.tasks.CountedTask", "--args", "{"], "not JSON"),
        (["--task", "tests.tasks.CountedTask", "--args", "3"], "give a JSON object or list"),
        (
            ["--task", "tests.tasks.CountedTask", "--args", "{}"],
            "missing a required argument: 'token'",
        ),
    ],
)
def test_clear_refuses_what_names_no_key(app: Flask, options: list[str], message: str) -> None:
    result = cli(app, "clear-locks", *options)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


@pytest.fixture
def redis_cache_app() -> Iterator[Flask]:
    """The test app with a Redis cache of its own prefix (on the counters' database)."""
    app = create_app(
        JOBTASTIC_CACHE={
            "CACHE_TYPE": "RedisCache",
            "CACHE_REDIS_URL": os.environ["JOBTASTIC_TEST_COUNTER_URL"],
            "CACHE_KEY_PREFIX": f"cli-{uuid.uuid4().hex[:8]}[*]:",  # glob characters too
        }
    )
    yield app
    backend = app.extensions["jobtastic"].cache_backend
    client, prefix = backend._write_client, backend._get_prefix()
    for key in client.scan_iter(match=prefix.replace("[*]", "[[][*][]]") + "*"):
        client.delete(key)
    close_app(app)


def test_clear_without_args_scans_a_redis_cache(redis_cache_app: Flask, token: str) -> None:
    cache = redis_cache_app.extensions["jobtastic"].cache_backend
    counted = cache_key_of(redis_cache_app, CountedTask, token=token)
    silent = cache_key_of(redis_cache_app, SilentTask, token=token)
    owned = keys.owner_scoped(counted, "alice")
    for key in (counted, silent, owned):
        assert herd.claim_herd_key(cache, keys.herd_key(key), str(uuid.uuid4()), 30).won
        assert herd.cache_set(cache, keys.result_key(key), str(uuid.uuid4()), 30)

    def left(suffixed: Any) -> list[str]:
        return [k for k in (counted, silent, owned) if cache.get(suffixed(k)) is not None]

    one_task = cli(redis_cache_app, "clear-locks", "--task", "tests.tasks.CountedTask")
    assert one_task.exit_code == 0, one_task.output
    assert one_task.output == "Deleted 2 herd claim(s).\n"  # alice's too
    assert left(keys.herd_key) == [silent]
    assert left(keys.result_key) == [counted, silent, owned]

    every_task = cli(redis_cache_app, "clear-cache")
    assert every_task.exit_code == 0, every_task.output
    assert every_task.output == "Deleted 3 cached result(s).\n"
    assert left(keys.result_key) == []
    assert left(keys.herd_key) == [silent]


# -- the worker ----------------------------------------------------------------------------


class FlaskCliWorker(WorkerProcess):
    """``flask --app tests.worker_app jobtastic worker ...``: the command under test."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "flask", "--app", "tests.worker_app", "jobtastic"] + [
            "worker",
            f"--pool={self.pool}",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            self.nodename,
        ]


def test_worker_runs_the_apps_jobs(default_servers: Servers, token: str) -> None:
    queue = f"jobtastic-cli-{uuid.uuid4().hex[:8]}"
    log = ARTIFACTS / f"worker-cli-{queue}.log"
    worker = FlaskCliWorker(log, pool="solo", env=default_servers.env(queue))
    worker.start()
    app = create_app(servers=default_servers.env(queue))  # sends to the worker's queue
    try:
        with app.app_context():
            result = CountedTask.delay_or_fail(token=token, seconds=0.1)
            assert result.get(timeout=20) == {"value": None, "token": token}
        assert runs(token) == 1
        assert f"Task tests.tasks.CountedTask[{result.id}] succeeded" in worker.log_tail()
        worker.stop()
        assert worker.process is not None and worker.process.returncode == 0, worker.log_tail()
    finally:
        worker.kill()
        celery = app.extensions["jobtastic"].celery
        with celery.connection_for_write() as connection:
            connection.default_channel.queue_delete(queue)
        close_app(app)
