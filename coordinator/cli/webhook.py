"""`forgecrew webhook replay ID`: run a stored delivery through intake again."""

from __future__ import annotations

import click

from coordinator.cli import cli, fails_cleanly, settings_from
from coordinator.cli.output import echo_json


@cli.group()
def webhook() -> None:
    """Stored GitHub webhook deliveries."""


@webhook.command()
@click.argument("delivery_id")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as a JSON object.")
@click.pass_context
@fails_cleanly
def replay(ctx: click.Context, delivery_id: str, as_json: bool) -> None:
    """Handle delivery DELIVERY_ID again, as a new delivery `<id>-replay-<n>` (e.g. after fixing the allowlist)."""
    from coordinator.replay import replay_delivery
    from coordinator.services import build_services

    services = build_services(settings_from(ctx))
    try:
        result = replay_delivery(services, delivery_id)
    finally:
        services.db.dispose()
    if as_json:
        echo_json(result)
        return
    task = f" (task {result['task_id']})" if result["task_id"] is not None else ""
    click.echo(f"{result['delivery']}: {result['outcome']}{task}")
