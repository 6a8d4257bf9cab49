"""Requests people make on an issue while its task is queued or running, handed to the agent between steps.

`@forgecrew <request>` on an issue whose task is active does not start a second task: the
coordinator checks the author's write access and records the request as a note event on the task
(coordinator/conversation/runner.py). The agent reads this inbox before each model call, so a
request reaches the run already under way, as `@claude` mid-run does for claude-code-action.
Only notes whose actor is a comment command are read: their authors were checked already.
"""

from __future__ import annotations

import logging

from sqlalchemy import func, select

from common.db import Database
from common.models import TaskEvent
from common.transitions import REQUEST_NOTE_PREFIX as REQUEST_PREFIX

log = logging.getLogger(__name__)
COMMENT_ACTOR = "comment:"


class RequestInbox:
    """The task's request notes newer than the last one handed over."""

    def __init__(self, db: Database, task_id: int, *, after_event: int = 0) -> None:
        self.db, self.task_id, self.last_id = db, task_id, after_event

    @classmethod
    def from_now(cls, db: Database, task_id: int) -> RequestInbox:
        """An inbox that skips what is already there: a follow-up run must not redo the issue's old requests."""
        with db.session() as session:
            newest = session.scalar(select(func.max(TaskEvent.id)).where(TaskEvent.task_id == task_id))
        return cls(db, task_id, after_event=int(newest or 0))

    def take(self) -> list[str]:
        """New requests as the agent reads them; nothing (and a log line) when the database does not answer."""
        try:
            with self.db.session() as session:
                rows = session.execute(select(TaskEvent.id, TaskEvent.actor, TaskEvent.detail).where(
                    TaskEvent.task_id == self.task_id, TaskEvent.id > self.last_id,
                    TaskEvent.actor.startswith(COMMENT_ACTOR, autoescape=True),
                    TaskEvent.detail.startswith(REQUEST_PREFIX, autoescape=True)).order_by(TaskEvent.id)).all()
        except Exception as exc:  # the lease's heartbeat decides about a lost database, not this
            log.info("task %s: requests not read (%s)", self.task_id, exc)
            return []
        if rows:
            self.last_id = rows[-1].id
        return [as_message(detail) for _, _, detail in rows]


def as_message(detail: str) -> str:
    """`request from alice: text` as the agent reads it."""
    author, _, text = detail[len(REQUEST_PREFIX):].partition(": ")
    return (f"A new request from @{author}, who has write access to the repository, arrived on the issue "
            f"while you were working. Take it into account in what you do next:\n\n{text.strip()}")
