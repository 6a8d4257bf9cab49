"""The outbox's send half: after the task row commits, put it on its specialty's queue."""

from __future__ import annotations

import logging

from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from common.celery_app import message_id, send_run, task_label
from common.db import Database, db_now
from common.models import Task
from common.states import TaskState
from common.transitions import transition

log = logging.getLogger(__name__)

# What a down or unreachable broker raises on publish; anything else is a bug and propagates.
BROKER_ERRORS: tuple[type[BaseException], ...] = (OperationalError, RedisError, OSError)
# A task is sent only from these states; past them a worker holds it.
SENDABLE = (TaskState.TRIAGED, TaskState.QUEUED)


class Dispatcher:
    def __init__(self, db: Database, celery: Celery) -> None:
        self.db = db
        self.celery = celery

    def dispatch(self, task_id: int, *, actor: str = "dispatcher", note: str = "") -> bool:
        """Send a triaged or queued task; on a broker failure leave it for the reconciler."""
        with self.db.session() as session:
            task = session.get(Task, task_id)
            if task is None or task.state not in SENDABLE:
                return False
            specialty, number = task.specialty, task.dispatch_count + 1
            label = task_label(task.repo, task.issue_number, specialty, task_id)
        if not self.send(task_id, specialty, number, label=label):
            return False
        self.record_sent(task_id, number, actor=actor, note=note)
        return True

    def send(self, task_id: int, specialty: str, number: int, *, label: str | None = None) -> bool:
        """Publish send `number` of the task (its message id); False, logged, when the broker is down."""
        try:
            send_run(self.celery, self.db.settings, task_id=task_id, specialty=specialty,
                     message=message_id(task_id, number), label=label)
        except BROKER_ERRORS as exc:
            log.warning("broker unreachable (%s: %s); task %s stays unsent until the reconciler "
                        "resends it", type(exc).__name__, exc, task_id)
            return False
        return True

    def record_sent(self, task_id: int, number: int, *, actor: str, note: str) -> None:
        """Mark the send, unless a worker already claimed the task: never move it back."""
        with self.db.session() as session:
            task = session.get(Task, task_id, with_for_update=True)
            if task is None or task.state not in SENDABLE:
                # the message reached a worker before this commit; its claim recorded the step
                return
            _mark_sent(session, task, number, actor=actor, note=note)


def _mark_sent(session: Session, task: Task, number: int, *, actor: str, note: str) -> None:
    task.dispatched_at = db_now(session)  # judged by the reconciler on the same clock
    task.dispatch_count = max(task.dispatch_count, number)
    detail = f"sent to queue {task.specialty}" + (f" ({note})" if note else "")
    if task.state == TaskState.TRIAGED or note:
        transition(session, task, TaskState.QUEUED, actor=actor, detail=detail)
