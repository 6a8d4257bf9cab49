"""Leases with fencing tokens: a task runs on at most one worker at a time."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from common.db import Database, db_now
from common.errors import LeaseLost, TaskCancelled, TaskNotFound
from common.models import Task, TaskEvent, TaskRun
from common.states import LEASED_STATES, TaskState
from common.transitions import transition

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    """Proof that this worker holds the task; `token` fences out earlier holders."""

    task_id: int
    owner: str
    token: int
    attempt: int


def claim(db: Database, task_id: int, owner: str, *, queue: str | None = None) -> Claim | None:
    """Take the task's lease and move it to running; None when it is not ours to run.

    `queue` is the queue the message came from: a message left on another specialty's queue by
    a task routed since (`/forgecrew route`) does not run it there.
    """
    settings = db.settings
    with db.session() as session:
        task = session.get(Task, task_id, with_for_update=True)
        if task is None:
            raise TaskNotFound(task_id)
        now = db_now(session)
        state = TaskState(task.state)
        if queue and queue != task.specialty and state in (TaskState.TRIAGED, TaskState.QUEUED):
            log.info("task %s was routed to %s; its message on %s is stale", task_id, task.specialty, queue)
            return None
        if state in LEASED_STATES:
            if task.lease_expires_at and task.lease_expires_at > now:
                log.info("task %s is held by %s until %s; skipping", task_id, task.lease_owner,
                         task.lease_expires_at)
                return None
            close_lost_runs(session, task.id, task.lease_owner, now)
            if task.attempt >= settings.max_attempts:
                transition(session, task, TaskState.FAILED, actor=owner,
                           detail=f"worker {task.lease_owner} was lost on attempt {task.attempt} "
                                  f"of {settings.max_attempts}; giving up")
                task.failure_reason = f"worker lost on {task.attempt} attempts (last: {task.lease_owner})"
                _clear_lease(task)
                return None
            transition(session, task, TaskState.QUEUED, actor=owner,
                       detail=f"lease of {task.lease_owner} expired; taking over")
        elif state is TaskState.TRIAGED:
            transition(session, task, TaskState.QUEUED, actor=owner,
                       detail="message arrived before the dispatch was recorded")
        elif state is not TaskState.QUEUED:
            log.info("task %s is %s; nothing to run", task_id, state.value)
            return None
        task.attempt += 1
        task.lease_owner = owner
        task.lease_token += 1
        task.lease_expires_at = now + timedelta(seconds=settings.lease_seconds)
        task.heartbeat_at = now
        transition(session, task, TaskState.RUNNING, actor=owner,
                   detail=f"attempt {task.attempt} of {settings.max_attempts}")
        return Claim(task_id=task.id, owner=owner, token=task.lease_token, attempt=task.attempt)


def renew(db: Database, held: Claim) -> None:
    """Push the lease expiry forward; raise LeaseLost when someone else took the task."""
    with db.session() as session:
        now = db_now(session)
        result = session.execute(
            update(Task)
            .where(Task.id == held.task_id, Task.lease_owner == held.owner, Task.lease_token == held.token,
                   Task.state.in_([s.value for s in LEASED_STATES]))
            .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=db.settings.lease_seconds))
        )
        if result.rowcount != 1:
            raise cancellation(session, held.task_id) or LeaseLost(
                f"task {held.task_id}: lease {held.token} held by {held.owner} is gone")


def load_fenced(session, held: Claim) -> Task:  # type: ignore[no-untyped-def]
    """The task row, locked, if and only if this claim still holds it."""
    task = session.get(Task, held.task_id, with_for_update=True)
    if task is None or task.lease_owner != held.owner or task.lease_token != held.token:
        raise cancellation(session, held.task_id) or LeaseLost(
            f"task {held.task_id}: lease {held.token} of {held.owner} was taken over")
    return task


def cancellation(session: Session, task_id: int) -> TaskCancelled | None:
    """The error a worker stops with when the task was cancelled (who and why), else None.

    A cancel clears the lease, so every fenced write of the worker fails; this tells that apart
    from a takeover, so the worker records its run as cancelled instead of lost.
    """
    task = session.get(Task, task_id)
    if task is None or task.state != TaskState.CANCELLED.value:
        return None
    event = session.scalars(select(TaskEvent).where(TaskEvent.task_id == task_id,
                                                    TaskEvent.to_state == TaskState.CANCELLED.value)
                            .order_by(TaskEvent.id.desc()).limit(1)).first()
    who = event.actor if event else "someone"
    why = f": {event.detail}" if event and event.detail else ""
    return TaskCancelled(f"cancelled by {who}{why}")


def close_lost_runs(session: Session, task_id: int, owner: str | None, now: datetime) -> None:
    """A run whose worker died never recorded its end; say what happened to it.

    Called by whoever finds the lease expired first: the reaper, or a worker taking the task over.
    """
    session.execute(
        update(TaskRun)
        .where(TaskRun.task_id == task_id, TaskRun.finished_at.is_(None))
        .values(finished_at=now, outcome="lost", detail=f"worker {owner} stopped renewing its lease")
    )


def release(task: Task) -> None:
    _clear_lease(task)


def _clear_lease(task: Task) -> None:
    task.lease_owner = None
    task.lease_expires_at = None


class Heartbeat:
    """Renews a lease in a background thread; `lost` is set once the lease is gone, `reason` says why."""

    def __init__(self, db: Database, held: Claim, interval: float | None = None) -> None:
        self.db = db
        self.held = held
        self.interval = interval or max(db.settings.lease_seconds / 3, 0.5)
        self.lost = threading.Event()
        self.reason: str | None = None
        self._renewed = time.monotonic()  # when the last renewal that succeeded was sent
        self._lock = threading.Lock()  # the thread and stop_reason() renew; one give-up decision
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{held.task_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def stop_reason(self) -> str | None:
        """Why the run must stop (e.g. "cancelled by cli:ana: wrong repo"), or None: the agent's should_stop.

        It asks the database itself each time (one renewal per agent step, small beside a model
        call), so a cancel stops the agent at its very next step, not at the next heartbeat: a
        throttle here let a fast run take two more steps after a cancel was committed.
        """
        if not self.lost.is_set():
            self._renew()
        return self.reason if self.lost.is_set() else None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._renew():
                return

    def _renew(self) -> bool:
        """One renewal; False once the lease is gone for good."""
        sent = time.monotonic()
        try:
            renew(self.db, self.held)
        except LeaseLost as exc:
            self._give_up(str(exc))
            return False
        except Exception as exc:  # a database blip: keep trying until the lease runs out
            unrenewed = time.monotonic() - self._renewed
            if unrenewed < self.db.settings.lease_seconds:
                log.warning("heartbeat for task %s failed (%s); retrying", self.held.task_id,
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                return True
            # past the lease the reaper may give the task to another worker: stop before writing anything
            self._give_up(f"task {self.held.task_id}: could not renew its lease for {unrenewed:.0f}s "
                          f"(FORGECREW_LEASE_SECONDS={self.db.settings.lease_seconds}): "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            return False
        self._renewed = sent
        return True

    def _give_up(self, reason: str) -> None:
        """Once: the run stops at its next step, with `reason` as its record says."""
        with self._lock:
            if not self.lost.is_set():
                log.warning("%s", reason)
                self.reason = reason
                self.lost.set()
