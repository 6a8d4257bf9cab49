"""Carry out recorded comment commands: acknowledge, check the author's access, act, reply.

Runs in the coordinator after the delivery's commit, on a small thread pool, so intake never
waits on the forge. A command is claimed by moving it from `pending` to `working` in one
statement, so the reconciler's sweep and the pool never both run it; one left `working` by a
coordinator that died is taken again after STALE_SECONDS.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update

from common.db import Database, db_now
from common.errors import ForgecrewError
from common.forge.base import Forge
from common.models import CommentCommand, Task, WebhookDelivery
from common.specialties import profiles
from common.states import TaskState
from common.transitions import REQUEST_NOTE_PREFIX, record_note
from coordinator.conversation.parse import HELP
from coordinator.intake import active_task_id
from coordinator.operations import Operations

log = logging.getLogger(__name__)
STALE_SECONDS = 300.0
# A pending command younger than this is the pool's to run; the sweep takes what the pool never got.
PENDING_GRACE_SECONDS = 10.0
# How long a collaborator-permission answer is trusted: a removed writer loses access this late at worst.
PERMISSION_TTL_SECONDS = 300.0


class PermissionCache:
    """(repository, user) -> may write, from the collaborator-permission API, kept for a few minutes."""

    def __init__(self, ttl: float = PERMISSION_TTL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = ttl, clock
        self._answers: dict[tuple[str, str], tuple[bool, float]] = {}
        self._lock = threading.Lock()

    def allowed(self, forge: Forge, repo: str, user: str) -> bool:
        key = (repo.lower(), user.lower())
        with self._lock:
            cached = self._answers.get(key)
        if cached and cached[1] > self.clock():
            return cached[0]
        answer = forge.has_write_access(repo, user)
        with self._lock:
            self._answers[key] = (answer, self.clock() + self.ttl)
        return answer


class CommandRunner:
    def __init__(self, db: Database, operations: Operations, forge_for: Callable[[int | None], Forge], *,
                 permissions: PermissionCache | None = None, threads: int = 2) -> None:
        self.db, self.operations, self.forge_for = db, operations, forge_for
        self.permissions = permissions or PermissionCache()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="commands")

    def submit(self, command_id: int) -> None:
        self._pool.submit(self._run_logged, command_id)

    def stop(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)

    def sweep(self) -> list[int]:
        """Run every command left pending or stale; the reconciler calls this."""
        with self.db.session() as session:
            now = db_now(session)
            stale, settled = now - timedelta(seconds=STALE_SECONDS), now - timedelta(seconds=PENDING_GRACE_SECONDS)
            ids = list(session.scalars(select(CommentCommand.id).where(or_(
                and_(CommentCommand.state == "pending", CommentCommand.created_at < settled),
                and_(CommentCommand.state == "working", CommentCommand.created_at < stale)))
                .order_by(CommentCommand.id).limit(100)))
        for command_id in ids:
            self._run_logged(command_id, stale_ok=True)
        return ids

    def _run_logged(self, command_id: int, stale_ok: bool = False) -> None:
        try:
            self.run(command_id, stale_ok=stale_ok)
        except Exception:  # one command's failure must not end the pool; the sweep retries it
            log.exception("comment command %s failed; it stays for the reconciler", command_id)

    def run(self, command_id: int, *, stale_ok: bool = False) -> str | None:
        """Carry out one command; its reply, or None when another runner has it."""
        command = self._claim(command_id, stale_ok)
        if command is None:
            return None
        forge = self.forge_for(command.installation_id)
        forge.react(command.repo, command.number, command.comment_id, "eyes")
        if not self.permissions.allowed(forge, command.repo, command.author):
            return self._refuse(forge, command)
        reply = self._act(command)
        forge.comment(command.repo, command.number, f"@{command.author} {reply}")
        self._finish(command_id, "done", reply)
        return reply

    def _claim(self, command_id: int, stale_ok: bool) -> CommentCommand | None:
        with self.db.session() as session:
            states = ("pending", "working") if stale_ok else ("pending",)
            claimed = session.execute(update(CommentCommand).where(
                CommentCommand.id == command_id, CommentCommand.state.in_(states))
                .values(state="working").execution_options(synchronize_session=False)).rowcount
            return session.get(CommentCommand, command_id) if claimed else None

    def _refuse(self, forge: Forge, command: CommentCommand) -> str:
        """Recorded always; answered once per person and issue, so a repeated attempt makes no noise."""
        reply = (f"only people with write access to {command.repo} can give forgecrew commands; "
                 f"this one (`{command.name}`) was not carried out")
        with self.db.session() as session:
            answered = session.scalar(select(CommentCommand.id).where(
                CommentCommand.repo == command.repo, CommentCommand.number == command.number,
                CommentCommand.author == command.author, CommentCommand.state == "refused",
                CommentCommand.reply.is_not(None)).limit(1))
        if answered is None:
            forge.comment(command.repo, command.number, f"@{command.author} {reply}")
        self._finish(command.id, "refused", reply if answered is None else None)
        log.info("command %s from %s on %s#%s refused: no write access", command.id, command.author,
                 command.repo, command.number)
        return reply

    def _finish(self, command_id: int, state: str, reply: str | None) -> None:
        """The command's end, also on its delivery's row, where `forgecrew webhook` shows outcomes."""
        with self.db.session() as session:
            row = session.get(CommentCommand, command_id)
            assert row is not None
            row.state, row.reply, row.finished_at = state, reply, db_now(session)
            verdict = (f"refused: {row.author} has no write access" if state == "refused"
                       else f"command {row.id} done: {row.name}")
            session.execute(update(WebhookDelivery).where(WebhookDelivery.delivery_id == row.delivery_id)
                            .values(outcome=verdict).execution_options(synchronize_session=False))

    def _act(self, command: CommentCommand) -> str:
        actor = f"comment:{command.author}"
        task_id = self._task_of(command)
        try:
            if command.name == "status":
                return self._status(task_id)
            if command.name in ("help", "unknown"):
                prefix = f"`{command.argument}` is not a command I know.\n\n" if command.name == "unknown" else ""
                return prefix + HELP
            if command.name == "request":
                return self._request(command, task_id, actor)
            if task_id is None:
                return "there is no forgecrew task on this issue yet; add the `forgecrew` label to start one."
            if command.name == "retry":
                detail = self.operations.retry(task_id, actor=actor)
                return f"task {task_id} is queued again on {detail['specialty']} (attempt {detail['attempt'] + 1})."
            if command.name == "cancel":
                self.operations.cancel(task_id, actor=actor, reason=f"cancelled by {command.author} in a comment")
                return f"task {task_id} is cancelled; a running agent stops at its next step."
            if command.name == "approve":
                detail = self.operations.approve(task_id, by=command.author, actor=actor)
                return (f"plan approved: task {task_id} is queued on {detail['specialty']} to make the change "
                        "as planned.")
            if command.name == "route":
                specialty = command.argument.split()[0].lower() if command.argument else ""
                if not specialty:
                    return f"say which specialty: `/forgecrew route <{'|'.join(profiles(self.db.settings))}>`."
                self.operations.route(task_id, specialty, actor=actor)
                return f"task {task_id} moved to the {specialty} queue."
        except ForgecrewError as exc:
            return f"that did not work: {exc}"
        return HELP

    def _task_of(self, command: CommentCommand) -> int | None:
        """The issue's latest task, or the task whose pull request this is."""
        with self.db.session() as session:
            return session.scalar(select(Task.id).where(
                Task.repo == command.repo,
                or_(Task.issue_number == command.number, Task.pr_number == command.number))
                .order_by(Task.id.desc()).limit(1))

    def _status(self, task_id: int | None) -> str:
        if task_id is None:
            return "there is no forgecrew task on this issue yet."
        with self.db.session() as session:
            task = session.get(Task, task_id)
            assert task is not None
            facts: list[Any] = [f"task {task.id} is **{task.state}** on {task.specialty}",
                                f"attempt {task.attempt}"]
            if task.pr_url:
                facts.append(f"pull request {task.pr_url}")
            if task.failure_reason:
                facts.append(f"failed because: {task.failure_reason}")
            if task.state == TaskState.AWAITING_APPROVAL:
                facts.append(f"plan revision {task.plan_revision} waits for `/forgecrew approve` or "
                             "`@forgecrew <changes to the plan>`")
            if task.cost_usd is not None:
                facts.append(f"{task.input_tokens + task.output_tokens} tokens, ${task.cost_usd:.4f}")
        return "; ".join(facts) + "."

    def _request(self, command: CommentCommand, task_id: int | None, actor: str) -> str:
        """A new task, a note for the active one, or, while a plan waits, the changes for a revised plan."""
        waiting = False
        with self.db.session() as session:
            active = active_task_id(session, command.repo, command.number)
            if active is not None:
                task = session.get(Task, active)
                assert task is not None
                waiting = task.state == TaskState.AWAITING_APPROVAL
                if not waiting:
                    record_note(session, task, actor=actor, detail=f"{REQUEST_NOTE_PREFIX}{command.author}: "
                                                                  f"{command.argument[:1000]}")
        if active is not None and waiting:
            self.operations.revise_plan(active, command.argument, by=command.author, actor=actor)
            return (f"revising the plan of task {active} with your changes; the revised plan will be posted here "
                    "for approval.")
        if active is not None:
            return (f"task {active} is already working on this issue; its agent gets your request at its next "
                    "step (a task still queued gets it when it starts). Once its pull request opens, review it or "
                    "comment there with what to change.")
        detail = self.operations.submit(repo=command.repo, issue=command.number, title=None,
                                        requested_by=command.author, instruction=command.argument)
        return f"on it: task {detail['id']} is queued on {detail['specialty']}."
