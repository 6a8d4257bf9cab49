"""The outbox's send half: after the task row commits, put it on its specialty's queue."""

from __future__ import annotations

import logging

from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from common.celery_app import send_run
from common.db import Database, db_now
from common.models import Task
from common.states import TaskState
from common.transitions import transition

log = logging.getLogger(__name__)

# What a down or unreachable broker raises on publish; anything else is a bug and propagates.
BROKER_ERRORS: tuple[type[BaseException], ...] = (OperationalError, RedisError, OSError)


class Dispatcher:
    def __init__(self, db: Database, celery: Celery) -> None:
        self.db = db
        self.celery = celery

    def dispatch(self, task_id: int, *, actor: str = "dispatcher", note: str = "") -> bool:
        """Send a triaged or queued task; on a broker failure leave it for the reconciler."""
        with self.db.session() as session:
            task = session.get(Task, task_id)
            if task is None or task.state not in (TaskState.TRIAGED, TaskState.QUEUED):
                return False
            specialty = task.specialty
        try:
            send_run(self.celery, self.db.settings, task_id=task_id, specialty=specialty)
        except BROKER_ERRORS as exc:
            log.warning("broker unreachable (%s: %s); task %s stays unsent until the reconciler "
                        "resends it", type(exc).__name__, exc, task_id)
            return False
        self._record_sent(task_id, specialty, actor=actor, note=note)
        return True

    def _record_sent(self, task_id: int, specialty: str, *, actor: str, note: str) -> None:
        """Mark the send, unless a worker already claimed the task: never move it back."""
        with self.db.session() as session:
            task = session.get(Task, task_id, with_for_update=True)
            if task is None or task.state not in (TaskState.TRIAGED, TaskState.QUEUED):
                # the message reached a worker before this commit; its claim recorded the step
                return
            task.dispatched_at = db_now(session)  # judged by the reconciler on the same clock
            detail = f"sent to queue {specialty}" + (f" ({note})" if note else "")
            if task.state == TaskState.TRIAGED:
                transition(session, task, TaskState.QUEUED, actor=actor, detail=detail)
            elif note:
                transition(session, task, TaskState.QUEUED, actor=actor, detail=detail)
