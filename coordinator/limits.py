"""Repository, installation and requester limits: how many tasks may be in flight or start per day.

In flight means queued, running or testing: states a worker holds or is about to (a waiting or
awaiting_approval task holds nothing). The daily quota counts a requester's tasks first sent in
the last 24 hours: a task counts once, at its first send (its first move to queued), so a
follow-up, a retry or a reaper's requeue of it costs nothing more, and a task that waited and is
then sent counts from that send. Every setting at 0 (the default) turns its check off, and with
all three off `configured()` is False and no caller does any of this.

Two admitters (coordinators, the sender and the reconciler) deciding at once would both see a
free slot; so the admitting transaction first takes a PostgreSQL transaction-level advisory lock
per repository, installation and requester it counts (`lock`), and the second waits for the
first's commit, then counts its task. SQLite runs in one process and every transaction there
begins IMMEDIATE (common/db.py): it is serialized already, and the locks are no-ops.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from celery import Celery
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from common.db import Database, db_now
from common.models import Task, TaskEvent
from common.settings import Settings
from common.states import TaskState

# States that take a slot: a worker holds the task or is about to.
IN_FLIGHT = (TaskState.QUEUED.value, TaskState.RUNNING.value, TaskState.TESTING.value)
QUOTA_WINDOW = timedelta(hours=24)
log = logging.getLogger(__name__)
_LOCK = text("SELECT pg_advisory_xact_lock(:key)")


def configured(settings: Settings) -> bool:
    """Whether any limit is on; with none, admission of a send costs nothing on the hot path."""
    return bool(settings.max_running_per_repo or settings.max_running_per_installation
                or settings.max_tasks_per_requester_per_day)


def lock_key(kind: str, value: object) -> int:
    """A stable signed 64-bit key for pg_advisory_xact_lock, the same in every process and host."""
    digest = hashlib.blake2b(f"forgecrew:{kind}:{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _keys(task: Task, settings: Settings) -> set[int]:
    keys = set()
    if settings.max_running_per_repo:
        keys.add(lock_key("repo", task.repo))
    if settings.max_running_per_installation and task.installation_id is not None:
        keys.add(lock_key("installation", task.installation_id))
    if settings.max_tasks_per_requester_per_day and task.requested_by:
        keys.add(lock_key("requester", task.requested_by))
    return keys


def lock(session: Session, tasks: Iterable[Task], settings: Settings) -> None:
    """Take the advisory locks every task's checks count under, in one sorted order (no deadlock).

    Held until the transaction ends; taking a held one again is free. Call it before checking a
    batch so that locks are never taken one task at a time in different orders.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    keys: set[int] = set()
    for task in tasks:
        keys |= _keys(task, settings)
    for key in sorted(keys):
        session.execute(_LOCK, {"key": key})


def hold_reason(session: Session, task: Task, settings: Settings) -> str | None:
    """Why a limit holds `task` back now, or None; the task itself is never counted."""
    if not configured(settings):
        return None
    lock(session, [task], settings)
    session.flush()  # this transaction's own moves (an earlier task of a batch) are counted
    if settings.max_running_per_repo:
        running = _in_flight(session, task, Task.repo == task.repo)
        if running >= settings.max_running_per_repo:
            return (f"repository {task.repo} has {running} of {settings.max_running_per_repo} tasks running "
                    "(FORGECREW_MAX_RUNNING_PER_REPO)")
    if settings.max_running_per_installation and task.installation_id is not None:
        running = _in_flight(session, task, Task.installation_id == task.installation_id)
        if running >= settings.max_running_per_installation:
            return (f"installation {task.installation_id} has {running} of {settings.max_running_per_installation}"
                    " tasks running (FORGECREW_MAX_RUNNING_PER_INSTALLATION)")
    if settings.max_tasks_per_requester_per_day and task.requested_by:
        return _quota_reason(session, task, settings.max_tasks_per_requester_per_day)
    return None


def _in_flight(session: Session, task: Task, where: object) -> int:
    return int(session.scalar(select(func.count()).select_from(Task)
                              .where(where, Task.state.in_(IN_FLIGHT), Task.id != task.id)) or 0)


def _quota_reason(session: Session, task: Task, quota: int) -> str | None:
    now = db_now(session)
    used, oldest = quota_used(session, task.requested_by, since=now - QUOTA_WINDOW, excluding=task.id)
    if used < quota:
        return None
    frees = (oldest + QUOTA_WINDOW) if oldest else now
    return (f"requester {task.requested_by} has started {used} of {quota} tasks in 24 h "
            f"(FORGECREW_MAX_TASKS_PER_REQUESTER_PER_DAY); the next frees up at {frees:%Y-%m-%d %H:%M:%S} UTC")


def quota_used(session: Session, requester: str, *, since: datetime,
               excluding: int | None = None) -> tuple[int, datetime | None]:
    """(tasks of `requester` first sent at or after `since`, the earliest of those first sends)."""
    first_sent = (select(TaskEvent.task_id, func.min(TaskEvent.at).label("at"))
                  .join(Task, Task.id == TaskEvent.task_id)
                  .where(Task.requested_by == requester, TaskEvent.to_state == TaskState.QUEUED.value)
                  .group_by(TaskEvent.task_id))
    if excluding is not None:
        first_sent = first_sent.where(Task.id != excluding)
    sub = first_sent.subquery()
    count, oldest = session.execute(select(func.count(), func.min(sub.c.at)).where(sub.c.at >= since)).one()
    if isinstance(oldest, str):  # SQLite returns the aggregate of a typed column as text
        oldest = datetime.fromisoformat(oldest)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return int(count or 0), oldest


def release_freed(scheduler: object, settings: Settings, repo: str | None) -> list[int]:
    """After a task left flight (its run ended, it was cancelled): send the waiting ones its slot frees.

    Only with a limit on; a repository limit alone frees only that repository's tasks, the
    installation limit and the quota may free any. Without this the reconciler's next sweep
    (every FORGECREW_REAPER_INTERVAL_SECONDS) would release them.
    """
    if not configured(settings):
        return []
    only_repo = not (settings.max_running_per_installation or settings.max_tasks_per_requester_per_day)
    return scheduler.release(repo=repo if only_repo else None)  # type: ignore[attr-defined, no-any-return]


def release_after_run(db: Database, celery: Celery, task_id: int) -> list[int]:
    """release_freed from a worker process once its run of `task_id` ended, with the worker's own
    database and Celery app; never raises (it runs in the task body's `finally`)."""
    if not configured(db.settings):
        return []
    from coordinator.admission import Scheduler
    from coordinator.dispatch import Dispatcher

    try:
        with db.session() as session:
            repo = session.scalar(select(Task.repo).where(Task.id == task_id))
        return release_freed(Scheduler(db, Dispatcher(db, celery)), db.settings, repo)
    except Exception:  # the reconciler's sweep releases them anyway; the run itself is finished
        log.exception("releasing waiting tasks after a run failed; the reconciler's sweep will")
        return []
