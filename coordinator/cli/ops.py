"""`forgecrew submit` and `forgecrew tasks retry|cancel`: steer tasks through the operations layer."""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from common.celery_app import make_celery
from common.db import Database
from common.settings import Settings
from coordinator.cli import cli, fails_cleanly, settings_from
from coordinator.cli.output import echo_json
from coordinator.cli.tasks import tasks
from coordinator.dispatch import Dispatcher
from coordinator.operations import Operations


def actor() -> str:
    """Who the audit log names for a command: the local user behind the CLI."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (e.g. a container's arbitrary uid)
        return "cli"


@contextmanager
def operations(settings: Settings) -> Iterator[Operations]:
    db = Database(settings)
    celery = make_celery(settings)
    try:
        yield Operations(db, Dispatcher(db, celery), celery)
    finally:
        db.dispose()


def report(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        echo_json(data)
        return
    where = f"{data['repo']}#{data['issue_number']}" if data["issue_number"] else data["repo"]
    click.echo(f"task {data['id']}: {data['state']} ({data['specialty']}) {where}")


@cli.command()
@click.option("--repo", required=True, help="owner/name on the configured forge, or a local git repository (path).")
@click.option("--issue", type=click.IntRange(min=1), help="Issue number to resolve.")
@click.option("--title", help="What to do, when there is no issue.")
@click.option("--body", default="", help="Details, when there is no issue.")
@click.option("--specialty", help="Skip triage and use this specialty; several, comma-separated "
              "(backend,frontend,testing), run as one workflow on one branch.")
@click.option("--json", "as_json", is_flag=True, help="Print the task as a JSON object.")
@click.pass_context
@fails_cleanly
def submit(ctx: click.Context, repo: str, issue: int | None, title: str | None, body: str,
           specialty: str | None, as_json: bool) -> None:
    """Queue work for the workers without a webhook: an issue, or a --title/--body request."""
    from coordinator.cli.run import import_local_repo

    if issue is None and not title:
        raise click.UsageError("give --issue N, or --title (and optionally --body)")
    settings = settings_from(ctx)
    path = Path(repo).expanduser()
    if path.is_dir():
        if issue is not None:
            raise click.UsageError(f"{path} is a local repository, which has no issues: describe the work with "
                                   "--title and --body instead of --issue")
        settings = settings.model_copy(update={"forge": "local",
                                               "local_forge_root": settings.local_forge_root.absolute()})
        repo = import_local_repo(settings, path)
        if not as_json:
            click.echo(f"using {path} as {repo} on the local forge at {settings.local_forge_root} (workers "
                       "must use the local forge: `up` does without GitHub credentials, others need "
                       "FORGECREW_FORGE=local and this LOCAL_FORGE_ROOT)")
    with operations(settings) as ops:
        data = ops.submit(repo=repo, issue=issue, title=title, body=body, specialty=specialty,
                          requested_by=actor())
    report(data, as_json)


@tasks.command("retry")
@click.argument("task_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the task as a JSON object.")
@click.pass_context
@fails_cleanly
def retry_task(ctx: click.Context, task_id: int, as_json: bool) -> None:
    """Queue a failed or cancelled task again."""
    with operations(settings_from(ctx)) as ops:
        report(ops.retry(task_id, actor=actor()), as_json)


@tasks.command("cancel")
@click.argument("task_id", type=int)
@click.option("--reason", default="", help="Why; kept in the audit log.")
@click.option("--json", "as_json", is_flag=True, help="Print the task as a JSON object.")
@click.pass_context
@fails_cleanly
def cancel_task(ctx: click.Context, task_id: int, reason: str, as_json: bool) -> None:
    """Cancel a task; a running agent stops at its next step and publishes nothing."""
    with operations(settings_from(ctx)) as ops:
        report(ops.cancel(task_id, actor=actor(), reason=reason), as_json)


@tasks.command("approve")
@click.argument("task_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the task as a JSON object.")
@click.pass_context
@fails_cleanly
def approve_task(ctx: click.Context, task_id: int, as_json: bool) -> None:
    """Approve the plan a task waits on (awaiting_approval): the change runs with it, as `/forgecrew approve` does."""
    who = actor()
    with operations(settings_from(ctx)) as ops:
        report(ops.approve(task_id, by=who, actor=who), as_json)

