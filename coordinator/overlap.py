"""A task its worker held back for overlapping an open PR (`serialize_overlapping: true`) waits until that PR ends.

The worker decided at publish (workers/overlap.py) and put the task in `waiting` with a reason that
starts with WAIT_PREFIX and its changed files recorded. This check is what keeps it there: while any
other task of the repository with a PR in play still changes one of those files, it waits; once that
PR merges (its task done) or closes (cancelled), the scheduler releases it and it runs afresh.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from common.models import Task
from common.settings import Settings
from common.states import TaskState
from workers.overlap import WAIT_PREFIX, files_of, find_overlaps


def hold_reason(session: Session, task: Task, settings: Settings) -> str | None:
    """The overlap a serialized task still waits for, or None (and None for every task not held so)."""
    if task.state != TaskState.WAITING or not (task.wait_reason or "").startswith(WAIT_PREFIX):
        return None
    overlaps = find_overlaps(session, task_id=task.id, repo=task.repo, files=files_of(task))
    return overlaps[0].wait_reason() if overlaps else None
