"""Long-running commands; each stays in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import sys

import click
from sqlalchemy import text

from common.broker_check import wait_for_broker
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


def quiet_root_warning() -> None:
    """Drop Celery's superuser warning, printed on every start as root, and only that warning.

    Its concern is pickle, which forgecrew never accepts (JSON only), and agent commands never run
    as root: the sandbox runs them as FORGECREW_SANDBOX_UID. Celery has no setting for it.
    """
    import warnings

    from celery.exceptions import SecurityWarning

    warnings.filterwarnings("ignore", message="You're running the worker with superuser privileges",
                            category=SecurityWarning)


def check_database(settings: Settings) -> None:
    """Fail at start, not at the first task, when the database is unreachable or unmigrated."""
    home = settings.state_home
    if settings.database_url == home.database_url and not home.database.exists():
        raise SettingsError(f"no state database in FORGECREW_HOME={home.root} yet: start `forgecrew up` there "
                            "first (or run `forgecrew db upgrade`), or set FORGECREW_DATABASE_URL")
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
@click.option("--workers", type=click.IntRange(min=1),
              help="Server processes (default: one per core on PostgreSQL, one on SQLite); the reconciler runs in one.")
@click.option("--access-log", is_flag=True, help="Log every request (off by default: it costs intake speed).")
@click.pass_context
@fails_cleanly
def coordinator(ctx: click.Context, host: str, port: int, no_reconciler: bool, workers: int | None,
                access_log: bool) -> None:
    """Serve webhooks, health checks and the reconciler."""
    from coordinator.serve import default_workers, serve
    from workers.sandbox import make_undumpable

    settings = settings_from(ctx)
    check_database(settings)
    make_undumpable()  # it holds the webhook secret and tokens too; agents may run on this host
    serve(settings, host=host, port=port, workers=workers or default_workers(settings),
          reconciler=not no_reconciler, access_log=access_log)


@cli.command()
@click.option("--specialty", "-s", "specialties", multiple=True, required=True,
              help="Queue(s) to consume; repeat or comma-separate.")
@click.option("--concurrency", "-c", type=click.IntRange(min=1),
              help="Agent tasks at once (default: FORGECREW_WORKER_CONCURRENCY, auto = sized to the host).")
@click.option("--hostname", "-n", help="Celery node name (default: <specialties>@<host>).")
@click.option("--pool", type=click.Choice(["prefork", "threads", "solo"]),
              help="Execution pool (default: FORGECREW_WORKER_POOL, threads).")
@click.option("--autoscale", metavar="MAX,MIN",
              help="Scale between MIN and MAX agent tasks on the queues' depth (default: the specialty's "
                   "autoscale, else FORGECREW_WORKER_AUTOSCALE; unset = fixed --concurrency).")
@click.pass_context
@fails_cleanly
def worker(ctx: click.Context, specialties: tuple[str, ...], concurrency: int | None, hostname: str | None,
           pool: str | None, autoscale: str | None) -> None:
    """Run a Celery worker consuming the given specialty queues."""
    from workers.autoscale import autoscale_plan, install, scalable_thread_pool
    from workers.runtime import WorkerRuntime
    from workers.sizing import worker_concurrency
    from workers.tasks import register_tasks

    settings = settings_from(ctx)
    settings.require_worker()  # the pipeline checks again per run; this fails at start, not per task
    queues = [name.strip() for item in specialties for name in item.split(",") if name.strip()]
    known = queue_names(settings)
    unknown = [name for name in queues if name not in known]
    if unknown:
        raise click.BadParameter(f"unknown specialty {', '.join(unknown)}; known: {', '.join(known)}",
                                 param_hint="--specialty")
    pool = pool or settings.worker_pool
    if autoscale and concurrency:
        raise click.UsageError("--autoscale sizes the worker itself: drop --concurrency")
    # a --concurrency flag is a fixed size asked for now: it beats an autoscale setting
    plan = None if concurrency else autoscale_plan(settings, queues, autoscale)
    if plan is not None and pool == "solo":
        raise click.UsageError("the solo pool runs one task at a time and cannot autoscale; use threads")
    guard_agent_host(settings)
    check_database(settings)
    wait_for_broker(settings)  # bounded at start; once running, Celery reconnects for ever
    quiet_root_warning()
    app = make_celery(settings)
    # prefork enforces soft and hard time limits itself; the threads and solo pools ignore them
    register_tasks(app, WorkerRuntime(settings), enforce_limits=pool != "prefork")
    size = worker_concurrency(settings, pool, concurrency)
    pool_args = ["--pool", pool]
    if plan is not None:
        install(app, plan, queues)
        size = plan.minimum
        if pool == "threads":  # Celery's threads pool cannot grow: ours can, up to MAX
            app.conf.worker_pool, pool_args = scalable_thread_pool(plan.maximum), []
    app.worker_main([
        "worker", "--queues", ",".join(queues), *pool_args, "--concurrency", str(size),
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

    from coordinator.app import add_sweeps
    from coordinator.services import build_services

    settings = settings_from(ctx)
    wait_for_broker(settings)  # a round that cannot send must not pass for a successful one
    services = build_services(settings)
    add_sweeps(services)  # comment commands, follow-ups, notices and waiting tasks, as in the coordinator
    if once:
        report = services.reconciler.run_once()
        for sweep in services.reconciler.sweeps:
            sweep()
        click.echo(f"resent {report.resent} requeued {report.requeued} failed {report.failed}")
        if report.broker_error:
            raise SettingsError(f"the round stopped early: {report.broker_error}; check FORGECREW_BROKER_URL")
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
@click.option("--no-auth", is_flag=True, help="No basic auth: only behind a proxy that authenticates.")
@click.pass_context
@fails_cleanly
def flower(ctx: click.Context, host: str, port: int, no_auth: bool) -> None:
    """Flower dashboard on the broker's events, behind basic auth, its state kept in HOME."""
    from coordinator.flower import run_flower

    settings = settings_from(ctx)
    if not no_auth:
        settings.require("flower_password", purpose="Flower is behind basic auth (FORGECREW_FLOWER_USER, default "
                                                    "forgecrew); or pass --no-auth behind an authenticating proxy")
    sys.exit(run_flower(settings, host=host, port=port, auth=not no_auth))
