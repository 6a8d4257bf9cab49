"""Rows for tests, made through the same functions production uses."""

from __future__ import annotations

from common.db import Database
from common.models import Task
from coordinator.intake import NewTask, create_task
from coordinator.triage import TriageDecision


def make_task(db: Database, *, repo: str = "acme/app", issue_number: int | None = 1, specialty: str = "backend",
              title: str = "Fix the thing", body: str = "") -> int:
    """A triaged task, as intake leaves it."""
    with db.session() as session:
        task: Task = create_task(session, NewTask(repo, issue_number, title, body, requested_by="tester"),
                                 TriageDecision(specialty, "test"), actor="test")
        return task.id
