"""A task its worker held back for overlapping an open PR (`serialize_overlapping: true`) waits until that PR ends.

The worker decided at publish (workers/overlap.py) and put the task in `waiting` with a reason that
starts with WAIT_PREFIX and its changed files recorded. This check is what keeps it there: while any
other task of the repository with a PR in play still changes one of those files, it waits; once that
PR merges (its task done) or closes (cancelled), the scheduler releases it and it runs afresh.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.db import Database
from common.forge.base import Forge, ForgeError
from common.models import Task
from common.settings import Settings
from common.states import TaskState
from common.transitions import transition
from workers.overlap import WAIT_PREFIX, files_of, find_overlaps

log = logging.getLogger(__name__)
ACTOR = "overlap"


def hold_reason(session: Session, task: Task, settings: Settings) -> str | None:
    """The overlap a serialized task still waits for, or None (and None for every task not held so)."""
    if task.state != TaskState.WAITING or not (task.wait_reason or "").startswith(WAIT_PREFIX):
        return None
    overlaps = find_overlaps(session, task_id=task.id, repo=task.repo, files=files_of(task))
    return overlaps[0].wait_reason() if overlaps else None


class OverlapChecks:
    """The reconciler's sweep for serialized tasks: asks the forge about the PRs they wait for.

    A merge or close whose webhook never came (the local forge sends none) would leave the earlier
    task pr_open and the serialized one waiting for ever. Each such PR is asked about at most once per
    FORGECREW_DEPENDENCY_CHECK_SECONDS, PER_SWEEP a round; a merged one's task moves pr_open -> done, a
    closed one's -> cancelled, as their deliveries would have moved them, and the repository is released.
    """

    PER_SWEEP = 10

    def __init__(self, db: Database, forge_for: Callable[[int | None], Forge], release: Callable[..., object],
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.db, self.forge_for, self.release, self.clock = db, forge_for, release, clock
        self._asked: dict[int, float] = {}  # task id of the PR's task -> when this process last asked

    def sweep(self) -> list[int]:
        """Settle the awaited PRs the forge reports merged or closed; the tasks moved."""
        interval, now = self.db.settings.dependency_check_seconds, self.clock()
        with self.db.session() as session:
            held = session.scalars(select(Task).where(Task.state == TaskState.WAITING.value,
                                                      Task.wait_reason.startswith(WAIT_PREFIX))
                                   .order_by(Task.id).limit(200)).all()
            awaited = {other.task_id: task.repo for task in held
                       for other in find_overlaps(session, task_id=task.id, repo=task.repo, files=files_of(task))}
        due = [task_id for task_id in sorted(awaited)
               if now - self._asked.get(task_id, now - interval) >= interval][:self.PER_SWEEP]
        moved = [task_id for task_id in due if self._settle(task_id, now)]
        for repo in sorted({awaited[task_id] for task_id in moved}):
            self.release(repo=repo)
        return moved

    def _settle(self, task_id: int, now: float) -> bool:
        self._asked[task_id] = now
        with self.db.session() as session:
            task = session.scalars(select(Task).where(Task.id == task_id).with_for_update(skip_locked=True)).first()
            if task is None or task.state != TaskState.PR_OPEN or task.pr_number is None:
                return False
            try:
                state = self.forge_for(task.installation_id).pull_state(task.repo, task.pr_number)
            except ForgeError as exc:
                log.info("cannot read %s's PR #%s (%s); the tasks overlapping it keep waiting", task.repo,
                         task.pr_number, exc)
                return False
            if state == "merged":
                transition(session, task, TaskState.DONE, actor=ACTOR,
                           detail=f"pull request #{task.pr_number} merged (seen on the forge)")
            elif state == "closed":
                transition(session, task, TaskState.CANCELLED, actor=ACTOR,
                           detail=f"pull request #{task.pr_number} closed unmerged (seen on the forge)")
            else:
                return False
        return True
