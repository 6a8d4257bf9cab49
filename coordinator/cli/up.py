"""`forgecrew up`: the whole cluster on one host, with nothing to set up first.

With no FORGECREW_DATABASE_URL and FORGECREW_BROKER_URL it uses SQLite and an embedded
Redis-protocol server in FORGECREW_HOME; with them it uses the operator's PostgreSQL and
Redis (or RabbitMQ). Missing secrets are generated into HOME once and printed, so the
webhook secret pasted into GitHub survives restarts.
"""

from __future__ import annotations

import fcntl
import os
import sys
from dataclasses import dataclass, field
from typing import IO

import click
from pydantic import SecretStr

from common import migrate
from common.broker_check import wait_for_broker
from common.errors import SettingsError
from common.settings import GENERATED_SECRETS, Settings
from common.specialties import queue_names
from coordinator.cli import cli, fails_cleanly, settings_from
from coordinator.cli.servers import guard_agent_host
from coordinator.supervisor import Child, Supervisor

GITHUB_CREDENTIALS = ("github_token", "github_app_id", "github_app_private_key")
# The server's advice to change a kernel setting for background saves: it is the host's
# operator's call (docs/single-host.md says so), not something every start should shout.
BROKER_NOISE = ("Memory overcommit must be enabled",)


@dataclass
class Plan:
    """What `up` runs with: the settings, variables its children need, and what to tell the operator."""

    settings: Settings
    env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def plan_single_host(settings: Settings) -> Plan:
    """Use the local forge when GitHub is not configured at all (only an Anthropic key is needed then)."""
    plan = Plan(settings, env={"FORGECREW_HOME": str(settings.home)})
    github_configured = any(settings.is_set(name) for name in GITHUB_CREDENTIALS)
    if settings.forge == "github" and "forge" not in settings.model_fields_set and not github_configured:
        plan.settings = settings.model_copy(update={"forge": "local"})
        plan.env["FORGECREW_FORGE"] = "local"
        plan.notes.append(f"no GitHub credentials: using the local forge in {settings.local_forge_root} "
                          "(set FORGECREW_GITHUB_TOKEN for GitHub)")
    if plan.settings.forge == "local" and not settings.repo_allowlist:
        # Only this host's operator can make repositories on the local forge: all of them are theirs.
        plan.settings = plan.settings.model_copy(update={"repo_allowlist": ["*"]})
        plan.env["FORGECREW_REPO_ALLOWLIST"] = "*"
        plan.notes.append("FORGECREW_REPO_ALLOWLIST is unset: every repository on the local forge may start work")
    return plan


def generate_secrets(plan: Plan) -> None:
    """Missing secrets are made once into HOME/secrets (mode 600); every command reads them back."""
    home = plan.settings.state_home
    updates = {name: SecretStr(home.generated_secret(name)) for name in GENERATED_SECRETS
               if not plan.settings.is_set(name)}
    plan.settings = plan.settings.model_copy(update=updates)


def hold_home_lock(settings: Settings) -> IO[str]:
    """One `up` per HOME: two would share a database and a broker socket without knowing it."""
    path = settings.state_home.root / "up.lock"
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise SettingsError(f"another `forgecrew up` (pid {holder}) is running with FORGECREW_HOME="
                            f"{settings.home}; stop it, or set another FORGECREW_HOME") from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def children(settings: Settings, env: dict[str, str], *, host: str, port: int, flower_port: int | None,
             single_worker: bool, concurrency: int | None) -> list[Child]:
    """The coordinator, the reconciler, a worker per specialty (or one for all) and Flower."""
    base = [sys.executable, "-m", "coordinator.cli"]
    full_env = {**os.environ, **env}
    queues = queue_names(settings)
    groups = [queues] if single_worker else [[name] for name in queues]
    extra = ["--concurrency", str(concurrency)] if concurrency else []
    made = [Child("coordinator", [*base, "coordinator", "--host", host, "--port", str(port), "--no-reconciler"],
                  full_env),
            Child("reconciler", [*base, "reconcile"], full_env)]
    for group in groups:
        name = "worker" if single_worker else f"worker:{group[0]}"
        made.append(Child(name, [*base, "worker", "--specialty", ",".join(group), *extra], full_env))
    if flower_port is not None:
        made.append(Child("flower", [*base, "flower", "--host", host, "--port", str(flower_port)], full_env))
    return made


def banner(plan: Plan, *, host: str, port: int, flower_port: int | None, broker: str) -> list[str]:
    settings = plan.settings
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{port}"
    lines = [
        f"forgecrew is starting; state in {settings.home}",
        f"  webhook URL     {url}/webhooks/github  (content type application/json, events: Issues, "
        "Issue comments, Pull requests, Pull request reviews, Pull request review comments, Check suites, "
        "Check runs, Statuses)",
        f"  webhook secret  {settings.secret('webhook_secret')}",
        f"  REST API        {url}/api/v1  bearer token {settings.secret('api_token')}  (OpenAPI at {url}/docs)",
        f"  metrics         {url}/metrics",
    ]
    if flower_port is not None:
        lines.append(f"  Flower          http://{shown}:{flower_port}  user {settings.flower_user}  "
                     f"password {settings.secret('flower_password')}")
    lines += [f"  database        {_safe_url(settings.database_url)}", f"  broker          {broker}",
              f"  forge           {settings.forge}"]
    lines += [f"  note: {note}" for note in plan.notes]
    if host in ("127.0.0.1", "localhost", "::1"):
        lines.append("  GitHub cannot reach 127.0.0.1: put a TLS reverse proxy in front of --host 0.0.0.0, or "
                     "forward deliveries (see README, 'Reaching it from GitHub')")
    lines.append("Ctrl-C stops everything.")
    return lines


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - shown to a person only; the database check reports real errors
        return url.split("@")[-1]


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address of the coordinator and Flower.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--flower-port", default=5555, show_default=True, type=click.IntRange(1, 65535))
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
@click.option("--single-worker", is_flag=True, help="One worker consuming every queue, instead of one per specialty.")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), help="Agent tasks at once, per worker.")
@click.option("--grace", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds the children get to stop before their process groups are killed.")
@click.pass_context
@fails_cleanly
def up(ctx: click.Context, host: str, port: int, flower_port: int, no_flower: bool, single_worker: bool,
       concurrency: int | None, grace: float) -> None:
    """Everything on one host: broker, migrations, coordinator, reconciler, workers and Flower."""
    from coordinator.embedded_broker import EmbeddedBroker

    plan = plan_single_host(settings_from(ctx))
    plan.settings.require_worker()
    guard_agent_host(plan.settings)
    plan.settings.state_home.ensure()
    lock = hold_home_lock(plan.settings)
    generate_secrets(plan)
    settings = plan.settings
    migrate.upgrade(settings)
    broker = EmbeddedBroker(settings.state_home) if settings.uses_embedded_broker else None
    if broker is not None:
        broker.start()
        described = f"{broker.url} (embedded {broker.binary.name}, append-only file in {settings.home}/broker)"
    else:
        wait_for_broker(settings)  # the operator's own broker: bounded wait, then one line
        described = _safe_url(settings.broker_url)
    flower = None if no_flower else flower_port
    supervisor = Supervisor(children(settings, plan.env, host=host, port=port, flower_port=flower,
                                     single_worker=single_worker, concurrency=concurrency), grace=grace)
    if broker is not None and broker.process is not None:
        supervisor.attach("broker", broker.process, skip=BROKER_NOISE)
    for line in banner(plan, host=host, port=port, flower_port=flower, broker=described):
        supervisor.say("up", line)
    try:
        status = supervisor.run()
    finally:
        if broker is not None:
            broker.stop()  # last: the workers' acks and the coordinator's sends must reach it first
        lock.close()
    sys.exit(status)

