"""`forgecrew db upgrade|current`."""

from __future__ import annotations

import click

from common import migrate
from coordinator.cli import cli, fails_cleanly, settings_from


@cli.group()
def db() -> None:
    """Database schema."""


@db.command()
@click.argument("revision", default="head")
@click.pass_context
@fails_cleanly
def upgrade(ctx: click.Context, revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    settings = settings_from(ctx)
    before = migrate.current_revision(settings)
    migrate.upgrade(settings, revision)
    after = migrate.current_revision(settings)
    click.echo(f"database at {after}" + (" (unchanged)" if after == before else f" (was {before or 'empty'})"))


@db.command()
@click.pass_context
@fails_cleanly
def current(ctx: click.Context) -> None:
    """Print the schema revision the database is at."""
    click.echo(migrate.current_revision(settings_from(ctx)) or "empty (run `forgecrew db upgrade`)")
