"""``flask jobtastic ...`` commands for operators.

Operators see every job: no command checks owners. ``status`` and ``cancel``
read a job the way the status and cancel endpoints do; ``list``, ``cleanup``
and ``clear`` work on the job registry; ``clear-locks`` and ``clear-cache``
delete herd claims and cached result ids; ``worker`` runs a Celery worker for
the app.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import click
from flask import current_app
from flask.cli import AppGroup

from . import keys, lifecycle, results, states
from .reading import viewer_document
from .registry import Registry
from .registry_store import BATCH, JOB_STATES, JobRecord, newest_first
from .state import JobtasticState

if TYPE_CHECKING:
    from .task import JobtasticTask

jobtastic_cli = AppGroup("jobtastic", help="Operate flask-jobtastic: jobs, registry, keys, worker.")


def _state() -> JobtasticState:
    state: JobtasticState | None = current_app.extensions.get("jobtastic")
    if state is None:
        raise click.ClickException("This app does not use flask-jobtastic (no Jobtastic(app)).")
    return state


def _registry() -> Registry:
    state = _state()
    if state.registry is None:
        raise click.ClickException("The job registry is off: set JOBTASTIC_REGISTRY.")
    return state.registry


@contextlib.contextmanager
def _answering(what: str) -> Iterator[None]:
    """A store that does not answer is an error message, not a traceback."""
    try:
        yield
    except click.ClickException:
        raise
    except Exception as exc:
        raise click.ClickException(f"{what} did not answer: {type(exc).__name__}: {exc}") from exc


def _checked_id(task_id: str) -> str:
    if not results.is_valid_task_id(task_id):
        raise click.BadParameter("expected a UUID", param_hint="'ID'")
    return task_id


def _echo_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, allow_nan=False))


# -- the registry ---------------------------------------------------------------


@jobtastic_cli.command("cleanup")
def cleanup_command() -> None:
    """Delete finished jobs that were seen long enough ago, or never seen for too long."""
    registry = _registry()
    with _answering("The registry's store"):
        removed = registry.cleanup()
    click.echo(f"Removed {removed} finished job record(s).")


@jobtastic_cli.command("clear")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def clear_command(yes: bool) -> None:
    """Delete every job record of the registry (results in Celery stay)."""
    registry = _registry()
    if not yes:
        click.confirm("Delete every job record?", abort=True)
    with _answering("The registry's store"):
        removed = registry.clear()
    click.echo(f"Removed {removed} job record(s).")


@jobtastic_cli.command("list")
@click.option("--owner", help="Only this owner's jobs.")
@click.option(
    "--state", "job_state", type=click.Choice(JOB_STATES), help="Only jobs in this state."
)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
def list_command(owner: str | None, job_state: str | None, limit: int) -> None:
    """The registry's jobs, newest first: id, state, progress, description.

    Without --owner every record is read, which takes a while on a big registry.
    """
    registry = _registry()
    with _answering("The registry's store"):
        records = _records(registry, owner, job_state, limit)
    for record in records:
        described = record.description or record.task_name
        click.echo(f"{record.id}  {record.state:<9}  {record.progress:5.1f}%  {described}")
    if not records:
        click.echo("No jobs.", err=True)


def _records(
    registry: Registry, owner: str | None, job_state: str | None, limit: int
) -> list[JobRecord]:
    wanted = [job_state] if job_state else None
    if owner is not None:
        return registry.jobs_of(owner, states=wanted, limit=limit)
    found: list[JobRecord] = []
    batch: list[str] = []
    for job_id in registry.store.all_ids():
        batch.append(job_id)
        if len(batch) >= BATCH:
            found += _matching(registry, batch, job_state)
            batch = []
    found += _matching(registry, batch, job_state)
    return newest_first(found)[:limit]


def _matching(registry: Registry, job_ids: list[str], job_state: str | None) -> list[JobRecord]:
    if not job_ids:
        return []
    records = registry.store.get_many(job_ids).values()
    return [record for record in records if job_state is None or record.state == job_state]


# -- one job --------------------------------------------------------------------


def _read(state: JobtasticState, task_id: str) -> results.JobView:
    with _answering("The result backend"):
        return results.read_job(state.celery.backend, task_id)


@jobtastic_cli.command("status")
@click.argument("task_id", metavar="ID")
def status_command(task_id: str) -> None:
    """Print the status document of job ID (JSON), whoever owns it.

    The document the status endpoint shows, as a viewer who is no owner sees
    it. Exits with 1 when the job is UNKNOWN.
    """
    state = _state()
    _checked_id(task_id)
    view = _read(state, task_id)
    with _answering("The result backend"):
        document = viewer_document(state, task_id, view)
    _echo_json(document)
    if document["state"] == states.UNKNOWN:
        raise click.exceptions.Exit(1)


@jobtastic_cli.command("cancel")
@click.argument("task_id", metavar="ID")
def cancel_command(task_id: str) -> None:
    """Ask job ID to stop, as POST /cancel does, and print its status document.

    The run stops for every owner, even one shared by several (an operator
    is no owner to detach). A queued job never starts; a running one stops
    at its next progress or step write, reading cancel_pending until then.
    """
    state = _state()
    _checked_id(task_id)
    view = _read(state, task_id)
    if "task_id" not in view.meta:
        raise click.ClickException(f"No job {task_id} is known to the result backend.")
    with _answering("The result backend"):
        document = viewer_document(state, task_id, view)
    if document["ready"]:
        click.echo(f"Job {task_id} has already ended: {document['state']}.")
        return
    # Outside a request there is no current owner, so nobody is merely detached:
    # the run itself is asked to stop (calling the app's owner_loader could name one).
    with _answering("The result backend"):
        lifecycle.request_cancel(state, task_id, (view.job or {}).get("owner"))
        document = viewer_document(state, task_id, results.read_job(state.celery.backend, task_id))
    click.echo(f"Asked job {task_id} to stop; the worker confirms it (REVOKED).")
    _echo_json(document)


# -- herd claims and cached results -----------------------------------------------

_TASK = click.option(
    "--task", "task_name", metavar="NAME", help="The task's name (module.ClassName unless set)."
)
_ARGS = click.option(
    "--args",
    "args_json",
    metavar="JSON",
    help="One call's arguments: a JSON object of keyword arguments or a list of positional "
    "ones. Needs --task. Without --args the keys are found by scanning (Redis caches only).",
)
_OWNER = click.option(
    "--owner",
    help="With --args: the owner who made the call, for classes whose keys are per owner "
    "(an owner_loader is set and the class does not share_across_owners).",
)


@jobtastic_cli.command("clear-locks")
@_TASK
@_ARGS
@_OWNER
def clear_locks_command(task_name: str | None, args_json: str | None, owner: str | None) -> None:
    """Delete herd claims, so the next identical call starts a run of its own.

    For a claim left by a run that will not release it. With --task and
    --args, the claim of that one call; otherwise every claim (of the task,
    with --task), found by scanning a Redis cache. memcached cannot list its
    keys: there, give --args. A run still going frees its key as it ends,
    even when a new run has claimed it since.
    """
    _clear(keys.herd_key, "herd claim", task_name, args_json, owner)


@jobtastic_cli.command("clear-cache")
@_TASK
@_ARGS
@_OWNER
def clear_cache_command(task_name: str | None, args_json: str | None, owner: str | None) -> None:
    """Delete cached result ids, so the next identical call computes again.

    The results stay in the result backend. With --task and --args, the
    cached id of that one call; otherwise every cached id (of the task, with
    --task), found by scanning a Redis cache. memcached cannot list its keys:
    there, give --args.
    """
    _clear(keys.result_key, "cached result", task_name, args_json, owner)


def _clear(
    suffixed: Callable[[str], str],
    what: str,
    task_name: str | None,
    args_json: str | None,
    owner: str | None,
) -> None:
    state = _state()
    task = _task(state, task_name) if task_name is not None else None
    if args_json is None:
        if owner is not None:
            raise click.UsageError("--owner needs --args.")
        pattern = suffixed(
            f"jobtastic:{keys.safe_prefix(_prefix(task))}:*" if task else "jobtastic:*"
        )
        removed = _delete_matching(state.cache_backend, pattern)
        click.echo(f"Deleted {removed} {what}(s).")
        return
    if task is None:
        raise click.UsageError("--args needs --task.")
    key = suffixed(_call_key(state, task, args_json, owner))
    with _answering("The cache"):
        held = state.cache_backend.get(key)
        deleted = bool(held is not None and state.cache_backend.delete(key))
    if deleted:
        click.echo(f"Deleted the {what} of {task.name} (job {held}): {key}")
    else:
        click.echo(f"No {what} of {task.name} for these arguments: {key}")
        if owner is None and _per_owner(state, task):
            click.echo("Calls made in a request are keyed per owner: give --owner.", err=True)


def _task(state: JobtasticState, name: str) -> JobtasticTask:
    from .task import JobtasticTask

    task = state.celery.tasks.get(name)
    if not isinstance(task, JobtasticTask):
        known = sorted(n for n, t in state.celery.tasks.items() if isinstance(t, JobtasticTask))
        raise click.BadParameter(
            f"no JobtasticTask named {name!r}; known: {', '.join(known) or 'none'}",
            param_hint="'--task'",
        )
    return task


def _prefix(task: JobtasticTask) -> str:
    return task.cache_prefix or task.name


def _per_owner(state: JobtasticState, task: JobtasticTask) -> bool:
    return state.owners_enforced and not task.share_across_owners


def _call_key(state: JobtasticState, task: JobtasticTask, args_json: str, owner: str | None) -> str:
    """The cache key ``sending.bind_call`` builds for this call."""
    try:
        given = json.loads(args_json)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="'--args'") from None
    if isinstance(given, dict):
        args, kwargs = (), given
    elif isinstance(given, list):
        args, kwargs = tuple(given), {}
    else:
        raise click.BadParameter("give a JSON object or list", param_hint="'--args'")
    try:
        cache_key = task.cache_key_for(args, kwargs)
    except TypeError as exc:
        raise click.BadParameter(str(exc), param_hint="'--args'") from None
    if owner is not None and not task.share_across_owners:
        cache_key = keys.owner_scoped(cache_key, owner)
    return cache_key


def _delete_matching(backend: Any, pattern: str) -> int:
    """Delete the keys matching a glob ``pattern`` (of unprefixed keys) on a Redis cache."""
    client = getattr(backend, "_write_client", None)
    get_prefix = getattr(backend, "_get_prefix", None)
    if client is None or not callable(get_prefix) or not hasattr(client, "scan_iter"):
        raise click.ClickException(
            f"The cache ({type(backend).__name__}) cannot list its keys (memcached has no "
            "way to), and herd claims and cached result ids are hashed: give --task NAME "
            "and --args JSON (and --owner) to clear the key of one call."
        )
    glob = re.sub(r"([\\*?\[\]])", r"\\\1", str(get_prefix())) + pattern
    removed = 0
    with _answering("The cache"):
        batch: list[Any] = []
        for key in client.scan_iter(match=glob, count=500):
            batch.append(key)
            if len(batch) >= 500:
                removed += int(client.delete(*batch))
                batch = []
        if batch:
            removed += int(client.delete(*batch))
    return removed


# -- the worker ---------------------------------------------------------------------


@jobtastic_cli.command(
    "worker",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED, metavar="[CELERY WORKER ARGS]...")
def worker_command(celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker for this app's Celery, with `celery worker`'s arguments.

    The same as `celery -A <module> worker ...` without naming the Celery
    app: e.g. `flask jobtastic worker --loglevel=INFO --concurrency=4`.
    Put Celery's own --help after `--`: `flask jobtastic worker -- --help`.
    """
    state = _state()
    state.celery.worker_main(["worker", *celery_args])
