"""The `forgecrew` command: servers, ops and one-off runs."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
from sqlalchemy.exc import DBAPIError

from common.errors import ForgecrewError
from common.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])


def fails_cleanly(fn: F) -> F:
    """Known errors become one line on stderr and a non-zero exit, not a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ForgecrewError as exc:
            click.echo(f"forgecrew: {exc}", err=True)
            sys.exit(2)
        except DBAPIError as exc:
            reason = str(exc.orig).splitlines()[0] if exc.orig else str(exc).splitlines()[0]
            click.echo(f"forgecrew: database error: {reason} (check FORGECREW_DATABASE_URL and run "
                       "`forgecrew db upgrade`)", err=True)
            sys.exit(3)

    return wrapper  # type: ignore[return-value]


def settings_from(ctx: click.Context) -> Settings:
    """Settings are read when a command runs, never at import."""
    if ctx.obj is None:
        ctx.obj = load_settings()
    return ctx.obj


# anthropic vendors httpx as httpx2; alembic would log its context on every start of every command
QUIET_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "alembic")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@click.group()
@click.option("--log-level", default="INFO", show_default=True, type=click.Choice(LOG_LEVELS, case_sensitive=False),
              help="Python logging level.")
def cli(log_level: str) -> None:
    """forgecrew: AI coding agents that turn GitHub issues into pull requests."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if logging.getLogger().level > logging.DEBUG:
        for name in QUIET_LOGGERS:  # a line per HTTP request buries the progress a person reads
            logging.getLogger(name).setLevel(logging.WARNING)


def load_commands() -> click.Group:
    """The `forgecrew` group with every command registered (each module adds its own on import)."""
    from coordinator.cli import config, db, ops, run, servers, status, tasks, up, webhook, workspaces  # noqa: F401

    return cli


def main() -> None:
    """The console script: every failure, usage errors included, is one line on stderr."""
    from coordinator.supervisor import die_with_supervisor

    die_with_supervisor()
    load_commands()
    try:
        status = cli.main(standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()  # `forgecrew` or a group alone: the help is the useful answer
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # bad option, unknown command, missing argument
        click.echo(f"forgecrew: {' '.join(exc.format_message().split())} (see --help)", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("forgecrew: aborted", err=True)
        sys.exit(1)
    except ForgecrewError as exc:
        click.echo(f"forgecrew: {exc}", err=True)
        sys.exit(2)
    sys.exit(status if isinstance(status, int) else 0)
