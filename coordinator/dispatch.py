"""The outbox's send half: after the task row commits, put it on its specialty's queue."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError
from sqlalchemy import case, func, insert, select, update
from sqlalchemy.orm import Session

from common import canvas
from common.celery_app import message_id, send_run, task_label
from common.db import Database, db_now
from common.models import Task, TaskEvent
from common.states import TaskState
from common.transitions import transition
from coordinator import admission

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
            task = session.get(Task, task_id, with_for_update=True)
            if task is None or task.state not in SENDABLE:
                return False
            reserved = task.state == TaskState.TRIAGED and admission.gated(self.db.settings)
            if not admission.admit(session, task, self.db.settings, actor=actor):
                return False  # waiting: the scheduler sends it once its reason clears
            specialty, number, priority = task.specialty, task.dispatch_count + 1, task.priority
            label = task_label(task.repo, task.issue_number, specialty, task_id)
            links = canvas.remaining(session, task)  # a workflow: the chain of its steps still to run
        if not self.send(task_id, specialty, number, label=label, priority=priority, links=links):
            if reserved:
                self.unreserve([(task_id, number)])
            return False
        self.record_sent(task_id, number, actor=actor, note=note)
        return True

    def send(self, task_id: int, specialty: str, number: int, *, label: str | None = None,
             producer: Any = None, priority: int = 0, links: Sequence[canvas.Link] = ()) -> bool:
        """Publish send `number` of the task (its message id); False, logged, when the broker is down.

        `links`: a workflow's steps still to run, sent as one chain (common/canvas.py) from the first.
        """
        try:
            if links:
                canvas.send_workflow(self.celery, self.db.settings, task_id=task_id, links=links, number=number,
                                     label=label, producer=producer, priority=priority)
            else:
                send_run(self.celery, self.db.settings, task_id=task_id, specialty=specialty,
                         message=message_id(task_id, number), label=label, producer=producer, priority=priority)
        except BROKER_ERRORS as exc:
            log.warning("broker unreachable (%s: %s); task %s stays unsent until the reconciler "
                        "resends it", type(exc).__name__, exc, task_id)
            return False
        return True

    def unreserve(self, unsent: list[tuple[int, int]]) -> None:
        """Admitted (queued) tasks whose send `number` failed: the reconciler's next round sends them."""
        with self.db.session() as session:
            for task_id, number in unsent:
                session.execute(update(Task).where(Task.id == task_id, Task.state == TaskState.QUEUED.value,
                                                   Task.dispatch_count == number - 1)
                                .values(dispatched_at=None).execution_options(synchronize_session=False))

    def record_sent(self, task_id: int, number: int, *, actor: str, note: str) -> None:
        """Mark the send, unless a worker already claimed the task: never move it back."""
        with self.db.session() as session:
            task = session.get(Task, task_id, with_for_update=True)
            if task is None or task.state not in SENDABLE:
                # the message reached a worker before this commit; its claim recorded the step
                return
            _mark_sent(session, task, number, actor=actor, note=note)

    def record_sent_many(self, sent: list[tuple[int, int]], *, actor: str) -> None:
        """record_sent for a batch of (task id, send number): a few set-wise statements in one transaction.

        Each UPDATE checks the state in its WHERE, so a task a worker claimed meanwhile is left alone,
        as record_sent leaves it; triaged ones move to queued with their audit event.
        """
        by_number: dict[int, list[int]] = {}
        for task_id, number in sent:
            by_number.setdefault(number, []).append(task_id)
        with self.db.session() as session:
            now = db_now(session)
            moved: dict[int, str] = {}
            for number, ids in by_number.items():  # one number for all, in intake's batches
                count = case((Task.dispatch_count > number, Task.dispatch_count), else_=number)
                moved.update(session.execute(
                    update(Task).where(Task.id.in_(ids), Task.state == TaskState.TRIAGED.value)
                    .values(state=TaskState.QUEUED.value, dispatched_at=now, updated_at=now, dispatch_count=count)
                    .returning(Task.id, Task.specialty).execution_options(synchronize_session=False)).all())
                already = [task_id for task_id in ids if task_id not in moved]
                if already:  # queued by someone else since (the reconciler): only the send is marked
                    session.execute(update(Task).where(Task.id.in_(already), Task.state == TaskState.QUEUED.value)
                                    .values(dispatched_at=now, dispatch_count=count)
                                    .execution_options(synchronize_session=False))
            if moved:
                self._queued_events(session, moved, now, actor=actor)

    @staticmethod
    def _queued_events(session: Session, moved: dict[int, str], now: datetime, *, actor: str) -> None:
        latest = dict(session.execute(select(TaskEvent.task_id, func.max(TaskEvent.at))
                                      .where(TaskEvent.task_id.in_(moved)).group_by(TaskEvent.task_id)).all())
        session.execute(insert(TaskEvent), [
            {"task_id": task_id, "from_state": TaskState.TRIAGED.value, "to_state": TaskState.QUEUED.value,
             "actor": actor, "detail": f"sent to queue {specialty}",
             "at": max(now, latest.get(task_id) or now)}  # as event_time: never before its latest event
            for task_id, specialty in moved.items()])

def _mark_sent(session: Session, task: Task, number: int, *, actor: str, note: str) -> None:
    task.dispatched_at = db_now(session)  # judged by the reconciler on the same clock
    task.dispatch_count = max(task.dispatch_count, number)
    detail = f"sent to queue {task.specialty}" + (f" ({note})" if note else "")
    if task.state == TaskState.TRIAGED or note:
        transition(session, task, TaskState.QUEUED, actor=actor, detail=detail)
