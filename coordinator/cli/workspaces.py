"""`forgecrew workspaces gc`: remove finished task directories past their retention."""

from __future__ import annotations

from datetime import timedelta

import click
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, TaskID
from sqlalchemy import select

from common.db import Database
from common.models import Task
from common.states import ACTIVE_STATES
from coordinator.cli import cli, fails_cleanly, settings_from
from coordinator.cli.output import echo_json


@cli.group()
def workspaces() -> None:
    """Per-task workspaces on this host."""


@workspaces.command()
@click.option("--days", type=click.FloatRange(min=0), help="Retention in days (default: FORGECREW_WORKSPACE_RETENTION_DAYS).")
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as a JSON object.")
@click.pass_context
@fails_cleanly
def gc(ctx: click.Context, days: float | None, as_json: bool) -> None:
    """Delete finished task directories older than the retention; never an active task's."""
    from workers.workspace import WorkspaceManager

    settings = settings_from(ctx)
    db = Database(settings)
    with db.session() as session:
        active = set(session.scalars(select(Task.id).where(Task.state.in_([s.value for s in ACTIVE_STATES]))))
    db.dispose()
    retention = timedelta(days=settings.workspace_retention_days if days is None else days)
    manager = WorkspaceManager(settings.workspace_root)
    with GcProgress() as progress:
        removed = manager.gc(retention, active, progress=progress)
    if as_json:
        echo_json({"removed": [str(path) for path in removed], "removed_count": len(removed),
                   "examined": progress.seen, "retention_days": retention.total_seconds() / 86400,
                   "root": str(manager.tasks)})
        return
    for path in removed:
        click.echo(f"removed {path}")
    click.echo(f"{len(removed)} workspace(s) removed of {progress.seen} examined")


class GcProgress:
    """Progress of a gc on stderr, so stdout stays the result: a bar on a terminal, else a count line
    every COUNT_EVERY entries (a host with thousands of finished tasks takes a while to sweep)."""

    COUNT_EVERY = 500

    def __init__(self) -> None:
        self.seen = 0
        self._console = Console(stderr=True)
        self._bar: Progress | None = None
        self._job: TaskID | None = None

    def __enter__(self) -> GcProgress:
        if self._console.is_terminal:
            self._bar = Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=self._console,
                                 transient=True)
            self._bar.start()
        return self

    def __call__(self, done: int, total: int) -> None:
        self.seen = done
        if self._bar is not None:
            if self._job is None:
                self._job = self._bar.add_task("workspaces", total=total)
            self._bar.update(self._job, completed=done)
        elif done % self.COUNT_EVERY == 0:
            click.echo(f"examined {done} of {total} workspaces", err=True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
