"""Run Flower on forgecrew's own Celery app: its queues, its broker options, auth and state in HOME.

Flower is started through the app (not `celery -A`), so it sees the same queue topology and
transport options as the workers, and nothing is read from the environment at import time.
The password reaches Flower through its FLOWER_BASIC_AUTH variable, never argv, which any
user on the host can read in /proc.
"""

from __future__ import annotations

import os

from common.celery_app import make_celery
from common.settings import Settings

# Flower keeps this many tasks in memory (and in its state file); an operator reads recent ones.
MAX_TASKS = 10_000
STATE_SAVE_INTERVAL_MS = 60_000


def flower_argv(settings: Settings, *, host: str, port: int) -> list[str]:
    """Flower's options: persistent state in HOME, saved every minute as well as on exit."""
    state = settings.state_home.flower_db
    return [
        "flower",
        f"--address={host}",
        f"--port={port}",
        "--persistent=True",
        f"--db={state}",
        f"--state_save_interval={STATE_SAVE_INTERVAL_MS}",
        f"--max_tasks={MAX_TASKS}",
        "--purge_offline_workers=3600",
    ]


def run_flower(settings: Settings, *, host: str, port: int, auth: bool = True) -> int:
    """Serve Flower until SIGINT/SIGTERM; returns its exit status."""
    settings.state_home.flower_db.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if auth:
        os.environ["FLOWER_BASIC_AUTH"] = f"{settings.flower_user}:{settings.secret('flower_password')}"
        metrics_behind_auth()
    else:
        os.environ.pop("FLOWER_BASIC_AUTH", None)
    app = make_celery(settings)
    status = app.start(flower_argv(settings, host=host, port=port))
    return status if isinstance(status, int) else 0


def metrics_behind_auth() -> None:
    """Flower serves /metrics (worker and task names, counts) outside its basic auth; this puts it behind.

    /healthcheck stays open: it says only "OK", and compose probes it.
    """
    from flower.views.monitor import Metrics
    from tornado import web

    if not getattr(Metrics.get, "forgecrew_authenticated", False):
        guarded = web.authenticated(Metrics.get)
        guarded.forgecrew_authenticated = True  # type: ignore[attr-defined]
        Metrics.get = guarded  # type: ignore[method-assign]
