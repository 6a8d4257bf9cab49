"""What the cluster looks like right now: broker and database health, queues, workers, task counts.

Read-only and quick: every broker question has a short timeout, and a part that is down is
reported as such instead of failing the whole picture (`forgecrew status` prints what it can).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery
from sqlalchemy import func, select, text

from common.db import Database, db_now
from common.errors import BrokerUnavailable
from common.models import Task
from common.settings import Settings
from common.specialties import queue_names
from common.states import LEASED_STATES, TaskState
from coordinator.agents import inspect_queues
from coordinator.dispatch import BROKER_ERRORS
from coordinator.metrics.broker import queue_depths as broker_queue_depths

# Seconds to wait for workers' replies to a broadcast; a live worker answers in milliseconds.
INSPECT_TIMEOUT = 1.5


def first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def database_health(db: Database) -> str:
    """"ok", or the first line of the error; never raises."""
    try:
        with db.session() as session:
            session.execute(text("SELECT 1 FROM tasks LIMIT 1"))
        return "ok"
    except Exception as exc:  # reported, not raised: the rest of the status still prints
        return f"error: {first_line(exc)}"


def broker_health(app: Celery, timeout: float) -> str:
    """"ok", or the first line of the error; never raises."""
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
        return "ok"
    except Exception as exc:
        return f"error: {first_line(exc)}"


def queue_depths(app: Celery, queues: Iterable[str]) -> dict[str, int | None]:
    """Messages waiting in each queue (not those a worker holds); None where the broker cannot say."""
    names = list(queues)
    known = broker_queue_depths(app, names, timeout=INSPECT_TIMEOUT)
    return {name: known.get(name) for name in names}


def consumers(app: Celery, timeout: float = INSPECT_TIMEOUT) -> dict[str, list[str]]:
    """{worker node: queues it consumes}, from the workers that answered within `timeout`."""
    try:
        return inspect_queues(app, timeout=timeout)
    except BROKER_ERRORS as exc:
        raise BrokerUnavailable(f"cannot reach the broker to ask the workers: {first_line(exc)}") from None


def workers(app: Celery, db: Database, timeout: float = INSPECT_TIMEOUT) -> list[dict[str, Any]]:
    """Each worker that answered: queues, pool and concurrency, active tasks, its tasks' last heartbeat."""
    nodes = consumers(app, timeout)
    if not nodes:
        return []
    # the nodes are known now: the next broadcasts end as soon as each of them has answered
    inspect = app.control.inspect(destination=list(nodes), limit=len(nodes), timeout=timeout)
    try:
        stats, active = inspect.stats() or {}, inspect.active() or {}
    except BROKER_ERRORS as exc:
        raise BrokerUnavailable(f"cannot reach the broker to ask the workers: {first_line(exc)}") from None
    beats = _lease_heartbeats(db, nodes)
    return [_worker(node, queues, stats.get(node) or {}, active.get(node) or [], beats.get(node))
            for node, queues in sorted(nodes.items())]


def _worker(node: str, queues: list[str], stats: dict[str, Any], active: list[dict[str, Any]],
            heartbeat: datetime | None) -> dict[str, Any]:
    pool = stats.get("pool") or {}
    implementation = str(pool.get("implementation") or "")
    return {
        "name": node,
        "queues": queues,
        # "celery.concurrency.prefork:TaskPool" -> prefork (or thread, solo, eventlet...)
        "pool": implementation.split(":", 1)[0].rsplit(".", 1)[-1] or None,
        "concurrency": pool.get("max-concurrency"),
        "pid": stats.get("pid"),
        "uptime_seconds": stats.get("uptime"),
        "active": [{"task_id": (job.get("kwargs") or {}).get("task_id"), "message_id": job.get("id"),
                    "started_at": _started(job.get("time_start"))} for job in active],
        "last_heartbeat": heartbeat.isoformat() if heartbeat else None,
    }


def _started(stamp: Any) -> str | None:
    """Celery's time_start is the worker's time.time(); as ISO for people and JSON."""
    if not isinstance(stamp, int | float):
        return None
    return datetime.fromtimestamp(stamp, UTC).isoformat()


def _lease_heartbeats(db: Database, nodes: Iterable[str]) -> dict[str, datetime]:
    """The newest lease renewal of each node's tasks (lease owners are "<node>/pid<n>@<host>")."""
    found: dict[str, datetime] = {}
    with db.session() as session:
        rows = session.execute(select(Task.lease_owner, Task.heartbeat_at)
                               .where(Task.lease_owner.is_not(None), Task.heartbeat_at.is_not(None)))
        for owner, beat in rows:
            node = owner.split("/", 1)[0]
            if node in nodes and (node not in found or beat > found[node]):
                found[node] = beat
    return found


def task_counts(db: Database) -> dict[str, dict[str, int]]:
    """Per specialty: running (incl. testing), queued, and failed in the last day (database clock)."""
    counts: dict[str, Counter[str]] = {}
    with db.session() as session:
        since = db_now(session) - timedelta(days=1)
        live = session.execute(select(Task.specialty, Task.state, func.count())
                               .where(Task.state.in_([TaskState.QUEUED.value, *(s.value for s in LEASED_STATES)]))
                               .group_by(Task.specialty, Task.state))
        for specialty, state, number in live:
            key = "queued" if state == TaskState.QUEUED.value else "running"
            counts.setdefault(specialty, Counter())[key] += number
        failed = session.execute(select(Task.specialty, func.count())
                                 .where(Task.state == TaskState.FAILED.value, Task.updated_at >= since)
                                 .group_by(Task.specialty))
        for specialty, number in failed:
            counts.setdefault(specialty, Counter())["failed_last_day"] += number
    return {name: {key: counter[key] for key in ("running", "queued", "failed_last_day")}
            for name, counter in counts.items()}


def status_report(settings: Settings, db: Database, app: Celery) -> dict[str, Any]:
    """Everything `forgecrew status` shows; `ok` is false when the broker or the database is down.

    A part that could not be read is None (not 0), so nobody mistakes "unknown" for "empty".
    """
    database = database_health(db)
    broker = broker_health(app, settings.dispatch_timeout_seconds)
    counts = task_counts(db) if database == "ok" else {}
    configured = queue_names(settings)
    names = [*configured, *sorted(set(counts) - set(configured))]  # tasks of a specialty since removed
    depths: dict[str, int | None] = {}
    nodes: dict[str, list[str]] | None = None
    if broker == "ok":
        try:
            depths = queue_depths(app, names)
            nodes = consumers(app)
        except (BrokerUnavailable, *BROKER_ERRORS) as exc:
            broker = f"error: {first_line(exc)}"
    rows = []
    for name in names:
        tally = counts.get(name, {})
        rows.append({
            "name": name,
            "queue_depth": depths.get(name),
            "workers": None if nodes is None else sum(1 for queues in nodes.values() if name in queues),
            **{key: (tally.get(key, 0) if database == "ok" else None)
               for key in ("running", "queued", "failed_last_day")},
        })
    return {
        "ok": database == "ok" and broker == "ok",
        "database": {"ok": database == "ok", "detail": database},
        "broker": {"ok": broker == "ok", "detail": broker},
        "workers": None if nodes is None else len(nodes),
        "specialties": rows,
    }
