"""`forgecrew tasks list|show`: read the state database."""

from __future__ import annotations

import json

import click
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from common.db import Database
from common.errors import TaskNotFound
from common.models import Task
from common.serialize import task_detail, task_summary
from common.states import TaskState
from coordinator.cli import cli, fails_cleanly, settings_from


@cli.group()
def tasks() -> None:
    """Inspect and steer tasks."""


@tasks.command("list")
@click.option("--state", type=click.Choice([s.value for s in TaskState]), help="Only this state.")
@click.option("--repo", help="Only this owner/name.")
@click.option("--specialty", help="Only this specialty.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
@fails_cleanly
def list_tasks(ctx: click.Context, state: str | None, repo: str | None, specialty: str | None,
               limit: int, as_json: bool) -> None:
    """List tasks, newest first."""
    db = Database(settings_from(ctx))
    query = select(Task).order_by(Task.id.desc()).limit(limit)
    for column, value in ((Task.state, state), (Task.repo, repo), (Task.specialty, specialty)):
        if value:
            query = query.where(column == value)
    with db.session() as session:
        rows = [task_summary(task) for task in session.scalars(query)]
    db.dispose()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'ID':>5}  {'STATE':<9} {'SPECIALTY':<9} {'ATT':>3}  {'REPO#ISSUE':<32} TITLE")
    for row in rows:
        where = f"{row['repo']}#{row['issue_number']}" if row["issue_number"] else row["repo"]
        click.echo(f"{row['id']:>5}  {row['state']:<9} {row['specialty']:<9} {row['attempt']:>3}  "
                   f"{where:<32} {row['title'][:60]}")


@tasks.command("show")
@click.argument("task_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
@fails_cleanly
def show_task(ctx: click.Context, task_id: int, as_json: bool) -> None:
    """One task with its events (the audit log) and token usage."""
    db = Database(settings_from(ctx))
    with db.session() as session:
        task = session.get(Task, task_id, options=[selectinload(Task.events), selectinload(Task.runs)])
        if task is None:
            raise TaskNotFound(task_id)
        data = task_detail(task)
    db.dispose()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key in ("id", "repo", "issue_number", "title", "specialty", "triage_reason", "state", "attempt",
                "branch", "pr_url", "failure_reason", "lease_owner"):
        if data[key] not in (None, ""):
            click.echo(f"{key + ':':<16}{data[key]}")
    usage = data["usage"]
    click.echo(f"{'usage:':<16}in {usage['input_tokens']} out {usage['output_tokens']} "
               f"cache-read {usage['cache_read_tokens']} cache-write {usage['cache_write_tokens']} "
               f"cost {usage['cost_usd'] if usage['cost_usd'] is not None else 'n/a'}")
    if data["runs"]:
        click.echo("runs:")
    for run in data["runs"]:
        sandbox = run["sandbox"] or "-"
        click.echo(f"  attempt {run['attempt']}  {run['outcome'] or 'running':<9} sandbox {sandbox:<10} "
                   f"{run['worker']}" + ("  (commands ran UNSANDBOXED)" if sandbox == "none" else ""))
    click.echo("events:")
    for event in data["events"]:
        click.echo(f"  {event['at']}  {event['from_state'] or '-':>9} -> {event['to_state']:<9} "
                   f"{event['actor']}: {event['detail']}")
