"""Say on the issue that its task failed because its workers kept dying.

A worker that fails a task labels the issue and writes why in its progress comment. A task the
reaper gives up on (its worker was lost on every attempt: a poison task, out of memory, a host that
keeps dying) has no worker left to say so, and the issue would read `forgecrew:working` for ever.
The reconciler's sweep finds such tasks failed within the last hour and writes the failure into
the label and the progress comment, once per process: both writes are idempotent, so a restarted
coordinator doing them again changes nothing a person can see.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select, update

from common.db import Database, db_now
from common.forge.base import CommentGone, Forge, ForgeError
from common.models import Task
from common.specialties import StatusLabel
from common.states import TaskState
from workers.progress_comment import render

log = logging.getLogger(__name__)
LOST_REASON_PREFIX = "worker lost on "  # the reaper's (and claim's) failure_reason when it gives up
RECENT = timedelta(hours=1)  # older failures were announced by an earlier process, or are history
PER_SWEEP = 20  # issues written per sweep at most: a burst stays under GitHub's secondary limits
ADVICE = ("Every attempt's worker stopped without finishing (killed, out of memory, or its host went down), "
          "so forgecrew gave up. Look at the worker logs, then comment `/forgecrew retry`.")


class GiveUpNotices:
    def __init__(self, db: Database, forge_for: Callable[[int | None], Forge]) -> None:
        self.db, self.forge_for = db, forge_for
        self._noted: set[int] = set()  # tasks this process already announced

    def sweep(self) -> list[int]:
        """Announce each recently given-up task once; the tasks announced."""
        with self.db.session() as session:
            since = db_now(session) - RECENT
            found = session.scalars(select(Task.id).where(
                Task.state == TaskState.FAILED.value, Task.issue_number.is_not(None), Task.updated_at > since,
                Task.failure_reason.startswith(LOST_REASON_PREFIX)).order_by(Task.id).limit(500)).all()
        fresh = [task_id for task_id in found if task_id not in self._noted][:PER_SWEEP]
        return [task_id for task_id in fresh if self.announce(task_id)]

    def announce(self, task_id: int) -> bool:
        """Label the issue failed and put the reason in the progress comment; False if not written."""
        with self.db.session() as session:
            task = session.scalars(select(Task).where(Task.id == task_id).with_for_update(skip_locked=True)).first()
            if task is None or task.state != TaskState.FAILED.value or task.issue_number is None:
                return False
            # not failure_reason itself: it names the worker's host, which has no place in a public comment
            body = render(task.id, {"state": "failed", "specialty": task.specialty, "attempt": task.attempt,
                                    "reason": f"its worker was lost on all {task.attempt} attempts",
                                    "advice": ADVICE})
            forge = self.forge_for(task.installation_id)
            try:
                forge.set_status_label(task.repo, task.issue_number, StatusLabel.FAILED)
                comment_id = _write(forge, task, body)
            except ForgeError as exc:  # the next sweep tries again
                log.warning("task %s: could not say on %s#%s that it failed (%s)", task.id, task.repo,
                            task.issue_number, exc)
                return False
            session.execute(update(Task).where(Task.id == task.id).values(progress_comment_id=comment_id)
                            .execution_options(synchronize_session=False))
            self._noted.add(task.id)
        log.info("task %s: given up after lost workers; said so on %s#%s", task_id, task.repo, task.issue_number)
        return True


def _write(forge: Forge, task: Task, body: str) -> int:
    """Edit the task's progress comment, or post one when it has none (or a person deleted it)."""
    assert task.issue_number is not None
    if task.progress_comment_id is not None:
        try:
            forge.edit_comment(task.repo, task.issue_number, task.progress_comment_id, body)
            return task.progress_comment_id
        except CommentGone:
            pass
    return forge.comment(task.repo, task.issue_number, body)
