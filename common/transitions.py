"""The one way a task changes state: checked against the state machine and logged as an event."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.errors import IllegalTransition
from common.db import db_now
from common.models import Task, TaskEvent
from common.states import TaskState, can_move


def transition(session: Session, task: Task, to_state: TaskState, *, actor: str, detail: str = "") -> TaskEvent:
    """Move `task` to `to_state` and append the audit event, or raise IllegalTransition."""
    from_state = TaskState(task.state)
    if not can_move(from_state, to_state):
        raise IllegalTransition(task.id, from_state.value, to_state.value)
    task.state = to_state.value
    # the database's clock: the reconciler judges updated_at by it, and events from many hosts sort true
    now = event_time(session, task)
    task.updated_at = now
    event = TaskEvent(task=task, from_state=from_state.value, to_state=to_state.value, actor=actor, detail=detail,
                      at=now)
    session.add(event)
    return event


# A note whose detail starts so, by a comment command's actor, is a request for the running agent
# (workers/requests_inbox.py reads it).
REQUEST_NOTE_PREFIX = "request from "


def record_note(session: Session, task: Task, *, actor: str, detail: str) -> TaskEvent:
    """An audit event that changes no state (from and to are the current one): a fact worth keeping."""
    event = TaskEvent(task=task, from_state=task.state, to_state=task.state, actor=actor, detail=detail,
                      at=event_time(session, task))
    session.add(event)
    return event


def record_creation(session: Session, task: Task, *, actor: str, detail: str = "") -> TaskEvent:
    """The first event of a task: it came into being as `pending`."""
    task.state = TaskState.PENDING.value
    event = TaskEvent(task=task, from_state=None, to_state=TaskState.PENDING.value, actor=actor, detail=detail,
                      at=event_time(session, task))
    session.add_all([task, event])
    return event


def event_time(session: Session, task: Task) -> datetime:
    """The database's clock, but never before the task's latest event, so its log reads in order by time.

    Two events in one transaction may share a stamp; a later one never gets an earlier stamp, even
    if the database's clock is stepped back.
    """
    stamps = [db_now(session)]
    stamps += [obj.at for obj in session.new if isinstance(obj, TaskEvent) and obj.task is task and obj.at]
    if task.id is not None:
        stored = session.scalar(select(func.max(TaskEvent.at)).where(TaskEvent.task_id == task.id))
        if stored is not None:
            stamps.append(stored)
    return max(stamps)
