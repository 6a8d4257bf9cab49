"""One comment per task on its issue, edited in place as the task moves, instead of a comment per step.

Its id is kept on the task, so a retry or a follow-up edits the same comment. Edits are spaced by
FORGECREW_PROGRESS_EDIT_INTERVAL_SECONDS to stay within GitHub's secondary rate limits; an update
inside that window is held and the next one writes the latest state, and the final one is
always written. A failed edit loses nothing: the state stays pending for the next update, and a
comment a person deleted is posted again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import update

from common.db import Database
from common.forge.base import CommentGone, Forge, ForgeError
from common.models import Task
from common.redact import Redactor

log = logging.getLogger(__name__)
MARKER = "<!-- forgecrew:progress -->"


class ProgressComment:
    def __init__(self, forge: Forge, redact: Redactor, db: Database, *, task_id: int, repo: str, number: int,
                 comment_id: int | None, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.forge, self.redact, self.db = forge, redact, db
        self.task_id, self.repo, self.number, self.comment_id = task_id, repo, number, comment_id
        self.interval, self.clock = interval, clock
        self.facts: dict[str, Any] = {}
        self.written_at: float | None = None
        self.pending = False

    def update(self, *, final: bool = False, **facts: Any) -> str | None:
        """Merge `facts` (state, specialty, attempt, turns, tests, pr, reason, usage, cost) and write.

        Returns what went wrong, for the run's record, or None.
        """
        self.facts.update({key: value for key, value in facts.items() if value is not None})
        self.pending = True
        if not final and self.written_at is not None and self.clock() - self.written_at < self.interval:
            return None
        return self._write()

    def _write(self) -> str | None:
        body = self.redact(render(self.task_id, self.facts))
        try:
            if self.comment_id is not None:
                try:
                    self.forge.edit_comment(self.repo, self.number, self.comment_id, body)
                except CommentGone:
                    log.info("task %s: its progress comment was deleted; posting it again", self.task_id)
                    self.comment_id = None
            if self.comment_id is None:
                self.comment_id = self.forge.comment(self.repo, self.number, body)
                self._remember(self.comment_id)
        except ForgeError as exc:  # a failed try is spaced like an edit: no request per step against a refusal
            self.written_at = self.clock()
            log.warning("task %s: progress comment not updated (%s); the next update tries again", self.task_id, exc)
            return f"could not update the progress comment: {exc}"
        self.written_at, self.pending = self.clock(), False
        return None

    def _remember(self, comment_id: int | None) -> None:
        with self.db.session() as session:
            session.execute(update(Task).where(Task.id == self.task_id).values(progress_comment_id=comment_id)
                            .execution_options(synchronize_session=False))


STATE_WORDS = {"running": "working", "testing": "running the tests", "pr_open": "pull request open",
               "failed": "failed", "cancelled": "cancelled", "queued": "queued",
               "awaiting_approval": "plan awaiting approval"}


def render(task_id: int, facts: dict[str, Any]) -> str:
    """The comment's Markdown: a headline for the state, then what a person wants to know next."""
    state = facts.get("state", "queued")
    lines = [MARKER, f"**forgecrew** · task {task_id} · {STATE_WORDS.get(state, state)}", ""]
    where = f"on **{facts['specialty']}**" if facts.get("specialty") else ""
    attempt = (f", follow-up {facts['followup']}" if facts.get("followup")  # a follow-up is no new attempt
               else f", attempt {facts['attempt']}" if facts.get("attempt") else "")
    turns = f", {facts['turns']} model turns so far" if facts.get("turns") and state == "running" else ""
    lines.append(f"- {state.replace('_', ' ')} {where}{attempt}{turns}".replace("  ", " ").rstrip())
    if facts.get("tests"):
        lines.append(f"- tests: {facts['tests']}")
    if facts.get("pr"):
        lines.append(f"- pull request: {facts['pr']}")
    if facts.get("reason"):
        lines.append(f"- why: {str(facts['reason'])[:1500]}")
    if facts.get("advice"):
        lines.append(f"\n{facts['advice']}")
    usage = facts.get("usage")
    if usage is not None:
        cost = facts.get("cost")
        lines.append(f"- tokens: {usage.input_tokens:,} in, {usage.output_tokens:,} out, "
                     f"{usage.cache_read_tokens:,} read from the cache"
                     + (f"; cost ${cost:.4f}" if cost is not None else ""))
    return "\n".join(lines)
