"""``flask jobtastic ...`` commands for operators."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from .registry import Registry
from .state import JobtasticState

jobtastic_cli = AppGroup("jobtastic", help="Manage flask-jobtastic's job registry.")


def _registry() -> Registry:
    state: JobtasticState | None = current_app.extensions.get("jobtastic")
    if state is None:
        raise click.ClickException("This app does not use flask-jobtastic (no Jobtastic(app)).")
    if state.registry is None:
        raise click.ClickException("The job registry is off: set JOBTASTIC_REGISTRY.")
    return state.registry


@jobtastic_cli.command("cleanup")
def cleanup_command() -> None:
    """Delete finished jobs that were seen long enough ago, or never seen for too long."""
    removed = _registry().cleanup()
    click.echo(f"Removed {removed} finished job record(s).")


@jobtastic_cli.command("clear")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def clear_command(yes: bool) -> None:
    """Delete every job record of the registry (results in Celery stay)."""
    if not yes:
        click.confirm("Delete every job record?", abort=True)
    removed = _registry().clear()
    click.echo(f"Removed {removed} job record(s).")
