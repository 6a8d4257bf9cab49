"""Say on the issue that its task is waiting for a worker, when it waits long enough to matter.

The worker writes the progress comment from its first step on (workers/progress_comment.py); a
task that waits on a busy queue would leave the issue silent until then. The reconciler's sweep
finds tasks still `queued` FORGECREW_QUEUED_NOTICE_SECONDS after they were sent and writes (or
edits) the same progress comment: queued on which specialty, behind how many others. The row is
locked while the comment is written, so a worker claiming the task meanwhile waits and then edits
this comment instead of posting a second one. A task taken quickly is never announced: no comment
for what is over before anyone could read it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import func, select, update

from common.db import Database, db_now
from common.errors import ForgecrewError
from common.forge.base import CommentGone, Forge, ForgeError
from common.models import Task
from common.states import TaskState
from workers.progress_comment import render

log = logging.getLogger(__name__)
PER_SWEEP = 20  # comments written per sweep at most: a burst of waiting tasks stays under secondary limits


class QueuedNotices:
    def __init__(self, db: Database, forge_for: Callable[[int | None], Forge]) -> None:
        self.db, self.forge_for = db, forge_for
        self._noted: set[tuple[int, int]] = set()  # (task, send number) already announced by this process

    def sweep(self) -> list[int]:
        """Announce each task waiting past the threshold once per send; the tasks announced."""
        wait = self.db.settings.queued_notice_seconds
        if wait <= 0:
            return []
        with self.db.session() as session:
            since = db_now(session) - timedelta(seconds=wait)
            candidates = session.execute(select(Task.id, Task.dispatch_count).where(
                Task.state == TaskState.QUEUED.value, Task.issue_number.is_not(None),
                Task.dispatched_at.is_not(None), Task.dispatched_at < since).order_by(Task.id).limit(500)).all()
        fresh = [task_id for task_id, sent in candidates if (task_id, sent) not in self._noted][:PER_SWEEP]
        return [task_id for task_id in fresh if self.announce(task_id)]

    def announce(self, task_id: int) -> bool:
        """Write the queued state into the task's progress comment; False when it is no longer queued."""
        with self.db.session() as session:
            task = session.scalars(select(Task).where(Task.id == task_id).with_for_update(skip_locked=True)).first()
            if task is None or task.state != TaskState.QUEUED.value or task.issue_number is None:
                return False
            ahead = session.scalar(select(func.count()).select_from(Task).where(
                Task.state == TaskState.QUEUED.value, Task.specialty == task.specialty, Task.id < task.id))
            facts = {"state": "queued", "specialty": task.specialty, "attempt": task.attempt + 1,
                     "reason": None, "advice": f"Waiting for a {task.specialty} worker"
                     + (f", behind {ahead} other task(s) on its queue." if ahead else ".")}
            body = render(task.id, {k: v for k, v in facts.items() if v is not None})
            try:
                forge = self.forge_for(task.installation_id)
            except ForgecrewError as exc:  # e.g. no GitHub credentials: the notice is a courtesy, work goes on
                self._noted.add((task.id, task.dispatch_count))
                log.warning("task %s: queued notice not written: %s", task.id, exc)
                return False
            comment_id = self._write(forge, task, body)
            if comment_id is None:
                return False
            session.execute(update(Task).where(Task.id == task.id).values(progress_comment_id=comment_id)
                            .execution_options(synchronize_session=False))
            self._noted.add((task.id, task.dispatch_count))
        log.info("task %s: still queued on %s; said so on %s#%s", task_id, facts["specialty"], task.repo,
                 task.issue_number)
        return True

    def _write(self, forge: Forge, task: Task, body: str) -> int | None:
        assert task.issue_number is not None
        try:
            if task.progress_comment_id is not None:
                try:
                    forge.edit_comment(task.repo, task.issue_number, task.progress_comment_id, body)
                    return task.progress_comment_id
                except CommentGone:
                    pass  # a person deleted it: post it again
            return forge.comment(task.repo, task.issue_number, body)
        except ForgeError as exc:  # the next sweep tries again; the task itself is untouched
            log.warning("task %s: queued notice not written (%s)", task.id, exc)
            return None
