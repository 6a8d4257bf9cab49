"""Long-running commands; each stays in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import click
from sqlalchemy import text

from common.celery_app import make_celery
from common.db import Database
from common.errors import SettingsError
from common.settings import Settings
from common.specialties import queue_names
from coordinator.cli import cli, fails_cleanly, settings_from


def guard_agent_host(settings: Settings) -> None:
    """Before running agents: no working sandbox stops us now, and our /proc is closed to other processes.

    The sandbox is probed here (a command run the way every command runs), so a host without
    bubblewrap or user namespaces refuses to start instead of failing every task. The
    undumpable flag is inherited by forked children (Celery's pool), so one call covers them.
    """
    from workers.sandbox import make_sandbox, make_undumpable

    make_sandbox(settings)
    make_undumpable()


def check_database(settings: Settings) -> None:
    """Fail at start, not at the first task, when the database is unreachable or unmigrated."""
    db = Database(settings)
    try:
        with db.session() as session:
            session.execute(text("SELECT 1 FROM tasks LIMIT 1"))
    except Exception as exc:
        reason = str(exc).splitlines()[0]
        raise SettingsError(f"cannot use FORGECREW_DATABASE_URL ({reason}); is the database up and "
                            "`forgecrew db upgrade` run?") from None
    finally:
        db.dispose()


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--no-reconciler", is_flag=True, help="Leave resends and reaping to another coordinator.")
@click.pass_context
@fails_cleanly
def coordinator(ctx: click.Context, host: str, port: int, no_reconciler: bool) -> None:
    """Serve webhooks, health checks and the reconciler."""
    import uvicorn

    from coordinator.app import create_app
    from workers.sandbox import make_undumpable

    settings = settings_from(ctx)
    check_database(settings)
    make_undumpable()  # it holds the webhook secret and tokens too; agents may run on this host
    app = create_app(settings, run_reconciler=not no_reconciler)
    uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=True)


@cli.command()
@click.option("--specialty", "-s", "specialties", multiple=True, required=True,
              help="Queue(s) to consume; repeat or comma-separate.")
@click.option("--concurrency", "-c", type=int, help="Agent tasks at once (default: settings).")
@click.option("--hostname", "-n", help="Celery node name (default: <specialties>@<host>).")
@click.option("--pool", default="prefork", show_default=True, type=click.Choice(["prefork", "threads", "solo"]))
@click.pass_context
@fails_cleanly
def worker(ctx: click.Context, specialties: tuple[str, ...], concurrency: int | None, hostname: str | None,
           pool: str) -> None:
    """Run a Celery worker consuming the given specialty queues."""
    from workers.runtime import WorkerRuntime
    from workers.tasks import register_tasks

    settings = settings_from(ctx)
    settings.require_worker()  # the pipeline checks again per run; this fails at start, not per task
    guard_agent_host(settings)
    queues = [name.strip() for item in specialties for name in item.split(",") if name.strip()]
    known = queue_names(settings)
    unknown = [name for name in queues if name not in known]
    if unknown:
        raise click.BadParameter(f"unknown specialty {', '.join(unknown)}; known: {', '.join(known)}",
                                 param_hint="--specialty")
    check_database(settings)
    app = make_celery(settings)
    register_tasks(app, WorkerRuntime(settings))
    app.worker_main([
        "worker", "--queues", ",".join(queues), "--pool", pool,
        "--concurrency", str(concurrency or settings.worker_concurrency),
        "--hostname", hostname or f"{'+'.join(queues)}@%h",
        "--loglevel", "INFO", "--task-events",
    ])


@cli.command()
@click.option("--once", is_flag=True, help="One round, print what it did, exit.")
@click.pass_context
@fails_cleanly
def reconcile(ctx: click.Context, once: bool) -> None:
    """Resend unsent tasks and requeue runs whose worker died (the coordinator also does this)."""
    import threading

    from coordinator.services import build_services

    services = build_services(settings_from(ctx))
    if once:
        report = services.reconciler.run_once()
        click.echo(f"resent {report.resent} requeued {report.requeued} failed {report.failed}")
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        services.reconciler.loop(stop)
    except KeyboardInterrupt:
        pass


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5555, show_default=True, type=int)
@click.pass_context
@fails_cleanly
def flower(ctx: click.Context, host: str, port: int) -> None:
    """Flower dashboard on the broker's events (the URL goes by environment, not argv)."""
    settings = settings_from(ctx)
    env = {**os.environ, "CELERY_BROKER_URL": settings.broker_url}
    argv = [sys.executable, "-m", "celery", "flower", f"--address={host}", f"--port={port}"]
    os.execvpe(argv[0], argv, env)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--concurrency", "-c", type=int, help="Agent tasks at once.")
@click.option("--grace", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds the children get to stop before their process groups are killed.")
@click.pass_context
@fails_cleanly
def up(ctx: click.Context, host: str, port: int, concurrency: int | None, grace: float) -> None:
    """Everything on one host: migrate, then a worker for every queue and the coordinator."""
    from common import migrate

    settings = settings_from(ctx)
    settings.require("webhook_secret", purpose="the coordinator verifies every GitHub webhook with it")
    settings.require_worker()
    guard_agent_host(settings)
    migrate.upgrade(settings)
    worker_argv = ["worker", "--specialty", ",".join(queue_names(settings))]
    if concurrency:
        worker_argv += ["--concurrency", str(concurrency)]
    children = [
        start_child([sys.executable, "-m", "coordinator.cli", *worker_argv]),
        start_child([sys.executable, "-m", "coordinator.cli", "coordinator", "--host", host, "--port", str(port)]),
    ]
    sys.exit(supervise(children, grace=grace))


def start_child(argv: list[str]) -> subprocess.Popen[bytes]:
    """A child leading its own process group, so stopping the group stops all it started."""
    return subprocess.Popen(argv, process_group=0)


def supervise(children: list[subprocess.Popen[bytes]], grace: float = 30) -> int:
    """Wait for SIGINT/SIGTERM or a child's exit, then stop every child's group; return an exit status."""
    import threading

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set() and all(child.poll() is None for child in children):
        stop.wait(0.5)
    failed = [child for child in children if child.poll() not in (None, 0)]
    stop_groups(children, grace)
    if failed:
        click.echo(f"forgecrew: a child process exited with status {failed[0].returncode}; stopped the rest",
                   err=True)
        return 1
    return 0


def stop_groups(children: list[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM each child's whole group (worker pool processes, git, agents' helpers), SIGKILL what is left.

    A group is killed once its leader has exited or the grace period is over: whatever is still
    in it then was left behind, and would otherwise outlive `forgecrew up`.
    """
    import time

    for child in children:
        _signal_group(child.pid, signal.SIGTERM)  # even if the leader exited: its group may live on
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for child in children:
        _signal_group(child.pid, signal.SIGKILL)
        child.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the group is empty
