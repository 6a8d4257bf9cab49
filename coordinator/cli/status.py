"""`forgecrew status` and `forgecrew workers`: the cluster at a glance, from the broker and the database."""

from __future__ import annotations

from typing import Any

import click

from common.celery_app import make_celery
from common.db import Database
from coordinator import cluster
from coordinator.cli import cli, fails_cleanly, settings_from
from coordinator.cli.output import echo_json, print_table
from coordinator.metrics import queries


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
@fails_cleanly
def status(ctx: click.Context, as_json: bool) -> None:
    """Per specialty: queue depth, workers consuming, running, queued, failed in the last day.

    Exits 1 when the broker or the database is down, after printing what it could read.
    """
    settings = settings_from(ctx)
    db = Database(settings)
    try:
        data = cluster.status_report(settings, db, make_celery(settings))
        data["waiting"] = waiting_report(db) if data["database"]["ok"] else None
    finally:
        db.dispose()
    if as_json:
        echo_json(data)
    else:
        for part in ("database", "broker"):
            click.echo(f"{part + ':':<10}{data[part]['detail']}")
        if data["workers"] is not None:
            click.echo(f"{'workers:':<10}{data['workers']}")
        print_table(["SPECIALTY", "QUEUE", "WORKERS", "RUNNING", "QUEUED", "FAILED 24H"],
                    [(row["name"], row["queue_depth"], row["workers"], row["running"], row["queued"],
                      row["failed_last_day"]) for row in data["specialties"]],
                    right=["QUEUE", "WORKERS", "RUNNING", "QUEUED", "FAILED 24H"])
        _print_waiting(data["waiting"])
    if not data["ok"]:
        down = [part for part in ("database", "broker") if not data[part]["ok"]]
        click.echo(f"forgecrew: {' and '.join(down)} down: "
                   + "; ".join(data[part]["detail"].removeprefix("error: ") for part in down), err=True)
        ctx.exit(1)


def waiting_report(db: Database) -> dict[str, Any]:
    """Waiting tasks: how many, and per reason kind the count and the one waiting longest (with its reason)."""
    with db.session() as session:
        rows = queries.waiting(session)
    kinds: dict[str, dict[str, Any]] = {}
    for row in rows:
        kind = kinds.setdefault(row.kind, {"count": 0, "oldest_since": None, "oldest_reason": None})
        kind["count"] += row.count
        if row.oldest is not None and (kind["oldest_since"] is None or row.oldest.isoformat() < kind["oldest_since"]):
            kind["oldest_since"], kind["oldest_reason"] = row.oldest.isoformat(), row.oldest_reason
    return {"total": sum(kind["count"] for kind in kinds.values()), "by_reason": kinds}


def _print_waiting(waiting: dict[str, Any] | None) -> None:
    if not waiting:
        return
    click.echo(f"{'waiting:':<10}{waiting['total']}")
    if waiting["total"]:
        print_table(["WAITING FOR", "TASKS", "OLDEST SINCE", "OLDEST REASON"],
                    [(kind, info["count"], info["oldest_since"] or "-", info["oldest_reason"] or "-")
                     for kind, info in sorted(waiting["by_reason"].items())], right=["TASKS"])


@cli.command("workers")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
@fails_cleanly
def list_workers(ctx: click.Context, as_json: bool) -> None:
    """Workers that answer on the broker: queues, pool, concurrency, active tasks, last lease heartbeat."""
    settings = settings_from(ctx)
    db = Database(settings)
    try:
        found = cluster.workers(make_celery(settings), db)
    finally:
        db.dispose()
    if as_json:
        echo_json(found)
        return
    if not found:
        click.echo("no worker answered (start one with `forgecrew worker --specialty S`)")
        return
    print_table(["WORKER", "QUEUES", "POOL", "CONC", "ACTIVE TASKS", "LAST HEARTBEAT"],
                [(w["name"], ",".join(w["queues"]), w["pool"], w["concurrency"],
                  ",".join(str(job["task_id"]) for job in w["active"]) or "-", w["last_heartbeat"])
                 for w in found], right=["CONC"])
