"""`forgecrew workspaces gc`: remove finished task directories past their retention."""

from __future__ import annotations

from datetime import timedelta

import click
from sqlalchemy import select

from common.db import Database
from common.models import Task
from common.states import ACTIVE_STATES
from coordinator.cli import cli, fails_cleanly, settings_from


@cli.group()
def workspaces() -> None:
    """Per-task workspaces on this host."""


@workspaces.command()
@click.option("--days", type=float, help="Retention in days (default: FORGECREW_WORKSPACE_RETENTION_DAYS).")
@click.pass_context
@fails_cleanly
def gc(ctx: click.Context, days: float | None) -> None:
    """Delete finished task directories older than the retention; never an active task's."""
    from workers.workspace import WorkspaceManager

    settings = settings_from(ctx)
    db = Database(settings)
    with db.session() as session:
        active = set(session.scalars(select(Task.id).where(Task.state.in_([s.value for s in ACTIVE_STATES]))))
    db.dispose()
    retention = timedelta(days=settings.workspace_retention_days if days is None else days)
    removed = WorkspaceManager(settings.workspace_root).gc(retention, active)
    for path in removed:
        click.echo(f"removed {path}")
    click.echo(f"{len(removed)} workspace(s) removed")
