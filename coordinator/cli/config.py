"""`forgecrew config reference`: every setting, rendered from the settings object."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from coordinator.cli import cli, fails_cleanly


@cli.group()
def config() -> None:
    """Settings: the reference of every FORGECREW_* variable."""


@config.command()
@click.option("--write", "write_to", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Rewrite the generated block of FILE (docs/configuration.md) instead of printing it.")
@click.option("--check", "check", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Exit 1 when FILE's generated block differs from what this version would write.")
@fails_cleanly
def reference(write_to: Path | None, check: Path | None) -> None:
    """Print every setting (variable, type, default, description) as Markdown; secrets are never shown."""
    from common import settings_reference

    if check is not None:
        if not settings_reference.is_current(check):
            click.echo(f"{check} is out of date: run `{settings_reference.REGENERATE}`", err=True)
            sys.exit(1)
        click.echo(f"{check} is current")
        return
    if write_to is not None:
        changed = settings_reference.write(write_to)
        click.echo(f"{write_to}: " + ("updated" if changed else "already current"))
        return
    click.echo(settings_reference.render(), nl=False)
