"""Create a task and its first events in the caller's transaction (the outbox's write half)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.models import Task
from common.states import ACTIVE_STATES, TaskState
from common.transitions import record_creation, transition
from coordinator.triage import TriageDecision


@dataclass(frozen=True)
class NewTask:
    repo: str
    issue_number: int | None
    title: str
    body: str
    requested_by: str
    installation_id: int | None = None


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


def create_task(session: Session, new: NewTask, decision: TriageDecision, *, actor: str) -> Task:
    """Insert a triaged task, or raise ActiveTaskExists (the unique index settles races)."""
    if new.issue_number is not None:
        existing = active_task_id(session, new.repo, new.issue_number)
        if existing is not None:
            raise ActiveTaskExists(existing)
    task = Task(
        repo=new.repo,
        issue_number=new.issue_number,
        title=new.title,
        body=new.body,
        specialty=decision.specialty,
        triage_reason=decision.reason,
        requested_by=new.requested_by,
        installation_id=new.installation_id,
    )
    try:
        with session.begin_nested():
            record_creation(session, task, actor=actor, detail=f"requested by {new.requested_by}")
            transition(session, task, TaskState.TRIAGED, actor="triage",
                       detail=f"{decision.specialty}: {decision.reason}")
            session.flush()
    except IntegrityError:
        existing = active_task_id(session, new.repo, new.issue_number) if new.issue_number else None
        raise ActiveTaskExists(existing) from None
    return task
