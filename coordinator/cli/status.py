"""`forgecrew status` and `forgecrew workers`: the cluster at a glance, from the broker and the database."""

from __future__ import annotations

import click

from common.celery_app import make_celery
from common.db import Database
from coordinator import cluster
from coordinator.cli import cli, fails_cleanly, settings_from
from coordinator.cli.output import echo_json, print_table


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
    if not data["ok"]:
        down = [part for part in ("database", "broker") if not data[part]["ok"]]
        click.echo(f"forgecrew: {' and '.join(down)} down: "
                   + "; ".join(data[part]["detail"].removeprefix("error: ") for part in down), err=True)
        ctx.exit(1)


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
