"""`forgecrew tasks list|show`: read the state database (retry and cancel live in cli/ops.py)."""

from __future__ import annotations

from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from common.db import Database
from common.errors import TaskNotFound
from common.models import Task
from common.serialize import task_detail, task_summary
from common.states import TaskState
from coordinator.cli import cli, fails_cleanly, settings_from
from coordinator.cli.output import dollars, echo_json, print_table


@cli.group()
def tasks() -> None:
    """Inspect and steer tasks."""


@tasks.command("list")
@click.option("--state", type=click.Choice([s.value for s in TaskState]), help="Only this state.")
@click.option("--repo", help="Only this owner/name.")
@click.option("--specialty", help="Only this specialty.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1), help="At most this many.")
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
        echo_json(rows)
        return
    print_table(["ID", "STATE", "SPECIALTY", "ATT", "REPO#ISSUE", "TITLE"],
                [(row["id"], row["state"], row["specialty"], row["attempt"],
                  f"{row['repo']}#{row['issue_number']}" if row["issue_number"] else row["repo"],
                  row["title"][:60]) for row in rows], right=["ID", "ATT"])


@tasks.command("show")
@click.argument("task_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
@fails_cleanly
def show_task(ctx: click.Context, task_id: int, as_json: bool) -> None:
    """The audit log of one task: transitions, and each run's tool calls, tests, tokens and cost."""
    db = Database(settings_from(ctx))
    with db.session() as session:
        task = session.get(Task, task_id, options=[selectinload(Task.events), selectinload(Task.runs),
                                                   selectinload(Task.steps)])
        if task is None:
            raise TaskNotFound(task_id)
        data = task_detail(task)
        plan = (task.plan, task.plan_revision, task.plan_approved_by)
    db.dispose()
    if as_json:
        echo_json(data)
        return
    for key in ("id", "repo", "issue_number", "title", "specialty", "triage_reason", "state", "attempt",
                "branch", "pr_url", "failure_reason", "lease_owner"):
        if data[key] not in (None, ""):
            click.echo(f"{key + ':':<16}{data[key]}")
    click.echo(f"{'usage:':<16}{_usage(data['usage'])}")
    if plan[0]:
        approval = f"approved by {plan[2]}" if plan[2] else "waiting for approval (`forgecrew tasks approve`)"
        click.echo(f"{'plan:':<16}revision {plan[1]}, {approval}")
        click.echo("\n".join(f"  {line}" for line in plan[0].splitlines()[:40]))
    if data["steps"]:
        click.echo(f"steps ({len(data['steps'])}, one branch):")
    for step in data["steps"]:
        _show_step(step, current=step["position"] == data["workflow_step"])
    click.echo("transitions:")
    for event in data["events"]:
        click.echo(f"  {event['at']}  {event['from_state'] or '-':>9} -> {event['to_state']:<9} "
                   f"{event['actor']}: {event['detail']}")
    if data["runs"]:
        click.echo("runs:")
    for run in data["runs"]:
        _show_run(run)


def _show_step(step: dict[str, Any], *, current: bool) -> None:
    commit = step["commit_sha"][:12] if step["commit_sha"] else "-"
    mark = "  <- current" if current and step["state"] != "done" else ""
    click.echo(f"  {step['position'] + 1}. {step['specialty']:<10} {step['state']:<8} commit {commit:<12} "
               f"tokens in {step['input_tokens']} out {step['output_tokens']} cost {dollars(step['cost_usd'])}{mark}")
    if step["tests"]:
        click.echo(f"     tests: {step['tests']}")
    if step["files"]:
        click.echo(f"     files: {', '.join(step['files'][:10])}" + (" …" if len(step["files"]) > 10 else ""))
    if step["summary"]:
        click.echo(f"     summary: {step['summary'].splitlines()[0][:160]}")
    if step["detail"]:
        click.echo(f"     failed: {step['detail'].splitlines()[0][:200]}")


def _usage(usage: dict[str, Any]) -> str:
    return (f"in {usage['input_tokens']} out {usage['output_tokens']} cache-read {usage['cache_read_tokens']} "
            f"cache-write {usage['cache_write_tokens']} cost {dollars(usage['cost_usd'])}")


def _show_run(run: dict[str, Any]) -> None:
    sandbox = run["sandbox"] or "-"
    click.echo(f"  attempt {run['attempt']}  {run['outcome'] or 'running':<9} sandbox {sandbox:<10} "
               f"{run['worker']}" + ("  (commands ran UNSANDBOXED)" if sandbox == "none" else ""))
    click.echo(f"    {run['started_at']} .. {run['finished_at'] or 'now'}  model {run['model'] or '-'}  "
               f"turns {run['turns']}  {_usage(run)}")
    if run["detail"]:
        click.echo(f"    detail: {run['detail'].splitlines()[0][:200]}")
    if run["test_command"]:
        verdict = {True: "passed", False: "failed", None: "not run"}[run["tests_passed"]]
        click.echo(f"    tests: `{run['test_command']}` {verdict}")
    if run["transcript"]:
        click.echo(f"    transcript: {run['transcript']}")
    if run["tool_calls"]:
        click.echo(f"    tool calls ({len(run['tool_calls'])}):")
    for call in run["tool_calls"]:
        mark = "  [error]" if call["is_error"] else ""
        click.echo(f"      {call['name']:<12} {call['argument']}{mark}")
