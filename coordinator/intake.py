"""Create a task and its first events in the caller's transaction (the outbox's write half)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import Connection, insert, select, text
from sqlalchemy.orm import Session

from common.db import db_now, insert_for
from common.models import ACTIVE_TASK_SQL, Task, TaskEvent
from common.states import ACTIVE_STATES, TaskState
from coordinator.triage import TriageDecision


@dataclass(frozen=True)
class NewTask:
    repo: str
    issue_number: int | None
    title: str
    body: str
    requested_by: str
    installation_id: int | None = None
    priority: int = 0  # tasks.priority from the priority labels (common/specialties.label_priority)


class ActiveTaskExists(Exception):
    """The issue already has a task in flight; the new trigger is recorded, not duplicated."""

    def __init__(self, task_id: int | None) -> None:
        self.task_id = task_id
        super().__init__(f"task {task_id} is already active for this issue")


def repo_allowed(repo: str, allowlist: list[str]) -> bool:
    """Shell-style patterns, case-insensitive as GitHub names are."""
    return any(fnmatch.fnmatchcase(repo.lower(), pattern.lower()) for pattern in allowlist)


def active_task_id(session: Session, repo: str, issue_number: int) -> int | None:
    return session.scalar(
        select(Task.id).where(
            Task.repo == repo,
            Task.issue_number == issue_number,
            Task.state.in_([s.value for s in ACTIVE_STATES]),
        )
    )


def insert_task(session: Session, new: NewTask, decision: TriageDecision, *, actor: str) -> int:
    """Insert a triaged task and its two first events; its id, or ActiveTaskExists.

    Two Core statements on the session's connection, no ORM flush: this is every webhook's hot
    path. The partial unique index on active tasks settles races: the insert skips a conflicting
    row (ON CONFLICT DO NOTHING, so no error and no savepoint), and then the issue's active task is
    the one that won. Its events are stamped with the database's clock as every transition is.
    """
    now = db_now(session)
    connection = session.connection()
    task_id = _insert_row(session, connection, new,
                          _row_values(new, decision.specialty, decision.reason, TaskState.TRIAGED, now))
    connection.execute(_INSERT_EVENT, [
        {"task_id": task_id, "from_state": None, "to_state": TaskState.PENDING.value, "actor": actor,
         "detail": f"requested by {new.requested_by}", "at": now},
        {"task_id": task_id, "from_state": TaskState.PENDING.value, "to_state": TaskState.TRIAGED.value,
         "actor": "triage", "detail": f"{decision.specialty}: {decision.reason}", "at": now},
    ])
    return task_id


# The triage_reason of a task insert_pending made, until LLM triage decides (coordinator/triage_runner.py).
AWAITING_LLM_TRIAGE = "llm triage: waiting for the model"


def insert_pending(session: Session, new: NewTask, rules: TriageDecision, *, actor: str) -> int:
    """Insert a task left `pending` for LLM triage, with its first event; its id, or ActiveTaskExists.

    The rules' choice is its specialty meanwhile; the reason marks it as waiting for the model,
    which is how the reconciler finds the ones a stopped coordinator never classified.
    """
    now = db_now(session)
    reason = f"{AWAITING_LLM_TRIAGE} (rules: {rules.specialty})"
    connection = session.connection()
    task_id = _insert_row(session, connection, new, _row_values(new, rules.specialty, reason, TaskState.PENDING, now))
    connection.execute(_INSERT_EVENT, [
        {"task_id": task_id, "from_state": None, "to_state": TaskState.PENDING.value, "actor": actor,
         "detail": f"requested by {new.requested_by}; waiting for LLM triage", "at": now}])
    return task_id


def _row_values(new: NewTask, specialty: str, reason: str, state: TaskState, now: Any) -> dict[str, Any]:
    return {
        "repo": new.repo, "issue_number": new.issue_number, "title": new.title, "body": new.body,
        "specialty": specialty, "triage_reason": reason, "state": state.value,
        "requested_by": new.requested_by, "installation_id": new.installation_id, "attempt": 0,
        "lease_token": 0, "dispatch_count": 0, "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0,
        "cache_write_tokens": 0, "created_at": now, "updated_at": now, "priority": new.priority,
    }


def _insert_row(session: Session, connection: Connection, new: NewTask, values: dict[str, Any]) -> int:
    """The new task's id, or ActiveTaskExists when the issue's active task won (ON CONFLICT DO NOTHING)."""
    statement = _insert_task(connection.dialect.name, keyed=new.issue_number is not None)
    task_id = connection.execute(statement, values).scalar()
    if task_id is None:
        raise ActiveTaskExists(active_task_id(session, new.repo, new.issue_number) if new.issue_number else None)
    return int(task_id)


@cache
def _insert_task(dialect: str, *, keyed: bool) -> Any:
    """Built once per dialect: a statement executed with its values as parameters reuses its compiled form."""
    statement = insert_for(dialect)(Task.__table__)
    if keyed:
        statement = statement.on_conflict_do_nothing(index_elements=["repo", "issue_number"],
                                                     index_where=text(ACTIVE_TASK_SQL))
    return statement.returning(Task.__table__.c.id)


_INSERT_EVENT = insert(TaskEvent.__table__)


def create_task(session: Session, new: NewTask, decision: TriageDecision, *, actor: str) -> Task:
    """insert_task, returning the row as an object for callers that go on changing it."""
    task = session.get(Task, insert_task(session, new, decision, actor=actor))
    assert task is not None
    return task

