"""A priority label added to an issue whose task is active: the task's priority changes in place.

A waiting task simply moves in the scheduler's order (priority, then age). A queued task whose
message is on the broker is sent again with the new priority: whichever copy a worker gets first
runs it, and the other finds it claimed (common/leases.claim), so it still runs once.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from common.models import Task
from common.specialties import label_priority
from common.states import TaskState
from common.transitions import record_note
from coordinator.intake import active_task_id

NAMES = {1: "high", 0: "normal", -1: "low"}


@dataclass(frozen=True)
class Reprioritised:
    description: str
    task_id: int | None
    resend: bool  # queued with a message out: send it again with the new priority


def reprioritise(session: Session, repo: str, issue_number: int, labels: list[str], *,
                 actor: str) -> Reprioritised:
    """Set the issue's active task's priority from its labels, in the caller's transaction."""
    task_id = active_task_id(session, repo, issue_number)
    if task_id is None:
        return Reprioritised("ignored: the issue has no active task to reprioritise", None, False)
    task = session.get(Task, task_id, with_for_update=True)
    assert task is not None
    wanted = label_priority(labels)
    if task.priority == wanted:
        return Reprioritised(f"recorded: task {task_id} is already {NAMES[wanted]} priority", task_id, False)
    before, task.priority = task.priority, wanted
    record_note(session, task, actor=actor, detail=f"priority {NAMES[before]} -> {NAMES[wanted]} (labels)")
    resend = task.state == TaskState.QUEUED and task.dispatch_count > 0
    return Reprioritised(f"task {task_id} is now {NAMES[wanted]} priority", task_id, resend)
