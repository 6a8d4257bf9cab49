"""Check recorded follow-ups and start them, one per pull request at a time, in the order they came.

Runs in the coordinator after the delivery's commit (and from the reconciler's sweep, for what a
coordinator that died left behind). A follow-up is `received` until its author's write access is
known (the cached collaborator-permission check comment commands use); then `pending`, or
`refused` (recorded, never run). A `ci` follow-up (a failing check of the PR) has no author to
check: ci.py decides it from the PR's head and its own cap. A task whose PR is open and that runs
no follow-up takes the oldest pending one: it moves pr_open -> queued with an event naming it and
is sent; the worker that claims the task finds that `running` follow-up and runs it
(workers/followup.py). The next one starts when the task is back on pr_open.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from common.db import Database, db_now
from common.forge.base import Forge, ForgeError
from common.models import Followup, Task, WebhookDelivery
from common.states import TaskState
from common.transitions import transition
from coordinator.conversation.runner import PermissionCache
from coordinator import workflow
from coordinator.dispatch import Dispatcher
from coordinator.followups.ci import CI, decide_ci
from coordinator.webhooks.followups import COMMENT as REVIEW_COMMENT

log = logging.getLogger(__name__)
ACTOR = "followups"
PENDING_GRACE_SECONDS = 10.0
# A follow-up still `running` this long after its task went back to pr_open (or failed) lost its worker.
ORPHAN_SECONDS = 120.0
STARTED = ("running", "done", "failed")  # what counts against MAX_FOLLOWUPS_PER_PR (ci: MAX_CI_FIXES_PER_PR)
# A task can take its next follow-up from these states (a failed follow-up leaves its PR open).
IDLE = (TaskState.PR_OPEN.value, TaskState.FAILED.value)


class FollowupRunner:
    def __init__(self, db: Database, dispatcher: Dispatcher, forge_for: Callable[[int | None], Forge], *,
                 permissions: PermissionCache | None = None, threads: int = 1) -> None:
        self.db, self.dispatcher, self.forge_for = db, dispatcher, forge_for
        self.permissions = permissions or PermissionCache()
        # one thread: two follow-ups of one PR are decided in the order they were submitted
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="followups")

    def submit(self, followup_id: int) -> None:
        self._pool.submit(self._logged, followup_id)

    def stop(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)

    def sweep(self) -> list[int]:
        """Decide what the pool never got, and start the next follow-up of every idle task; the reconciler calls this."""
        with self.db.session() as session:
            settled = db_now(session) - timedelta(seconds=PENDING_GRACE_SECONDS)
            session.execute(update(Followup).where(  # a coordinator died while checking: check again
                Followup.state == "checking", Followup.created_at < db_now(session) - timedelta(seconds=ORPHAN_SECONDS))
                .values(state="received").execution_options(synchronize_session=False))
            received = list(session.scalars(select(Followup.id).where(
                Followup.state == "received", Followup.created_at < settled).order_by(Followup.id).limit(100)))
            waiting = list(session.scalars(select(Followup.task_id).join(Task, Task.id == Followup.task_id).where(
                Followup.state == "pending", Task.state.in_(IDLE)).distinct()))
        self._end_orphans()
        for followup_id in received:
            self._logged(followup_id)
        for task_id in waiting:
            self.start_next(task_id)
        return received

    def _end_orphans(self) -> None:
        """Follow-ups that can never run: their task ended (merged, closed, cancelled), or a worker died
        between putting the task back and recording the follow-up's end. A stuck `running` one would
        hold every later follow-up of its PR."""
        with self.db.session() as session:
            now = db_now(session)
            ended = (TaskState.DONE.value, TaskState.CANCELLED.value)
            for row, state in session.execute(select(Followup, Task.state).join(Task, Task.id == Followup.task_id).where(
                    Followup.state.in_(("received", "pending", "running")),
                    Task.state.in_((*ended, *IDLE)))).all():
                if state in ended:
                    row.reply = f"not run: the task is {state}"
                elif row.state == "running" and session.get(Task, row.task_id).updated_at < now - timedelta(  # type: ignore[union-attr]
                        seconds=ORPHAN_SECONDS):
                    row.reply = "its run ended without recording how (the worker stopped); comment again to retry"
                else:
                    continue
                row.state, row.finished_at = "failed", now
                log.info("follow-up %s of task %s ended: %s", row.id, row.task_id, row.reply)

    def _logged(self, followup_id: int) -> None:
        try:
            self.decide(followup_id)
        except Exception:  # one follow-up's failure must not end the pool; the sweep takes it again
            log.exception("follow-up %s could not be decided; it stays for the reconciler", followup_id)

    def decide(self, followup_id: int) -> str | None:
        """Check the author, apply the cap, then start the task's next follow-up; the new state, or None when taken."""
        with self.db.session() as session:
            claimed = session.execute(update(Followup).where(Followup.id == followup_id, Followup.state == "received")
                                      .values(state="checking").execution_options(synchronize_session=False)).rowcount
            row = session.get(Followup, followup_id) if claimed else None
            if row is None:
                return None
            task = session.get(Task, row.task_id)
            assert task is not None
            repo, number, author, installation = task.repo, task.pr_number, row.author, row.installation_id
            kind, head_sha, comment_id = row.kind, row.head_sha, row.comment_id
        forge = self.forge_for(installation)
        if comment_id is not None and number is not None:
            acknowledge(forge, repo, number, comment_id, review_comment=kind == REVIEW_COMMENT)
        if kind == CI:
            return self._decide_ci(followup_id, forge, repo, number, head_sha)
        try:
            allowed = self.permissions.allowed(forge, repo, author)
        except ForgeError:
            self._set(followup_id, "received")  # unknown yet: the sweep asks again
            raise
        if not allowed:
            log.info("follow-up %s from %s on %s refused: no write access", followup_id, author, repo)
            self._set(followup_id, "refused", reply=f"{author} has no write access to {repo}",
                      outcome=f"refused: {author} has no write access")
            return "refused"
        sibling = self._same_review(followup_id)
        if sibling is not None:
            self._set(followup_id, "merged", reply=f"handled with follow-up {sibling}",
                      outcome=f"follow-up {followup_id} merged into {sibling} (same review)")
            return "merged"
        if self._over_cap(followup_id):
            limit = self.db.settings.max_followups_per_pr
            reply = (f"@{author} forgecrew has already made {limit} follow-up run(s) on this pull request "
                     "(MAX_FOLLOWUPS_PER_PR); a person is needed from here.")
            self._set(followup_id, "refused", reply=reply, outcome=f"refused: over {limit} follow-ups")
            if number is not None:
                forge.comment(repo, number, reply)
            return "refused"
        self._set(followup_id, "pending", outcome=f"follow-up {followup_id} pending")
        self.start_next(self._task_id(followup_id))
        return "pending"

    def _decide_ci(self, followup_id: int, forge: Forge, repo: str, number: int | None, sha: str | None) -> str:
        """A failing CI run needs no person's access, but its commit must be the PR's head (ci.py)."""
        if number is None or not sha:
            self._set(followup_id, "refused", reply="no pull request or commit to fix",
                      outcome="refused: no pull request or commit")
            return "refused"
        try:
            decision = decide_ci(self.db, forge, followup_id, repo=repo, number=number, sha=sha)
        except ForgeError:
            self._set(followup_id, "received")  # unknown yet: the sweep asks again
            raise
        self._set(followup_id, decision.state, reply=decision.reply, outcome=decision.outcome,
                  instructions=decision.instructions)
        log.info("ci follow-up %s on %s#%s: %s", followup_id, repo, number, decision.outcome)
        if decision.comment is not None:
            forge.comment(repo, number, decision.comment)
        if decision.state == "pending":
            self.start_next(self._task_id(followup_id))
        return decision.state

    def start_next(self, task_id: int) -> int | None:
        """Move an idle task with a pending follow-up to queued and send it; the follow-up started, if any."""
        with self.db.session() as session:
            task = session.get(Task, task_id, with_for_update=True)
            if task is None or task.state not in IDLE or task.pr_number is None:
                return None
            busy = session.scalar(select(func.count()).select_from(Followup).where(
                Followup.task_id == task_id, Followup.state == "running"))
            if busy:
                return None
            # the oldest undecided one goes first: another coordinator process may still be checking its author
            row = session.scalars(select(Followup).where(
                Followup.task_id == task_id, Followup.state.in_(("received", "checking", "pending")))
                .order_by(Followup.id).limit(1)).first()
            if row is None or row.state != "pending":
                return None
            row.state = "running"
            if row.review_id is not None:  # a review's comments arrive as deliveries of their own: one run for all
                session.execute(update(Followup).where(
                    Followup.task_id == task_id, Followup.review_id == row.review_id, Followup.id != row.id,
                    Followup.state.in_(("received", "pending"))).values(
                    state="merged", reply=f"handled with follow-up {row.id}", finished_at=db_now(session))
                    .execution_options(synchronize_session=False))
            routed = self._route(session, task, row)
            transition(session, task, TaskState.QUEUED, actor=ACTOR,
                       detail=f"follow-up {row.id}: {row.kind} by {row.author} on pull request #{task.pr_number}"
                       + routed)
            task.failure_reason, task.dispatched_at = None, None
            started = row.id
        self.dispatcher.dispatch(task_id, actor=ACTOR)  # a broker outage: the reconciler resends it
        log.info("task %s: follow-up %s started", task_id, started)
        return started

    def _route(self, session: Session, task: Task, row: Followup) -> str:
        """A workflow's PR: the follow-up goes to the specialty owning the files its review comments point at."""
        if task.workflow_step is None:
            return ""
        owner = workflow.followup_specialty(workflow.steps_of(session, task.id), _commented_paths(session, row),
                                            self.db.settings)
        if owner == task.specialty:
            return f" (for {owner})"
        task.specialty = owner
        return f" (routed to {owner}, whose files the comments point at)"

    def _same_review(self, followup_id: int) -> int | None:
        """A follow-up of the same review already waiting or running: GitHub sends a review and each of its comments apart."""
        with self.db.session() as session:
            row = session.get(Followup, followup_id)
            assert row is not None
            if row.review_id is None:
                return None
            return session.scalar(select(Followup.id).where(
                Followup.task_id == row.task_id, Followup.review_id == row.review_id, Followup.id != row.id,
                Followup.state.in_(("pending", "running"))).order_by(Followup.id).limit(1))

    def _over_cap(self, followup_id: int) -> bool:
        with self.db.session() as session:
            row = session.get(Followup, followup_id)
            assert row is not None
            earlier = session.scalar(select(func.count()).select_from(Followup).where(  # ci fixes: their own cap
                Followup.task_id == row.task_id, Followup.id != row.id, Followup.kind != CI,
                Followup.state.in_((*STARTED, "pending"))))
        return int(earlier or 0) >= self.db.settings.max_followups_per_pr

    def _task_id(self, followup_id: int) -> int:
        with self.db.session() as session:
            return int(session.scalar(select(Followup.task_id).where(Followup.id == followup_id)))

    def _set(self, followup_id: int, state: str, *, reply: str | None = None, outcome: str | None = None,
             instructions: str | None = None) -> None:
        """The follow-up's state, and its delivery's recorded outcome (what `forgecrew webhook` shows)."""
        with self.db.session() as session:
            row = session.get(Followup, followup_id)
            assert row is not None
            row.state = state
            if reply is not None:
                row.reply = reply
            if instructions is not None:
                row.instructions = instructions
            if state in ("refused", "merged"):
                row.finished_at = db_now(session)
            if outcome is not None:
                session.execute(update(WebhookDelivery).where(and_(WebhookDelivery.delivery_id == row.delivery_id))
                                .values(outcome=outcome).execution_options(synchronize_session=False))


def acknowledge(forge: Forge, repo: str, number: int, comment_id: int, *, review_comment: bool) -> None:
    """👀 on the comment that asked, as for comment commands; best effort (a deleted comment is no error)."""
    try:
        forge.react(repo, number, comment_id, "eyes", review_comment=review_comment)
    except ForgeError as exc:
        log.info("could not acknowledge comment %s on %s#%s: %s", comment_id, repo, number, exc)


def _commented_paths(session: Session, row: Followup) -> list[str]:
    """The files the follow-up's review comments are on, read from their deliveries (one per comment)."""
    same = Followup.id == row.id
    if row.review_id is not None:
        same = or_(same, Followup.review_id == row.review_id)
    payloads = session.scalars(select(WebhookDelivery.payload).join(
        Followup, Followup.delivery_id == WebhookDelivery.delivery_id).where(Followup.task_id == row.task_id, same))
    paths: list[str] = []
    for raw in payloads:
        try:
            comment = (json.loads(raw or "{}") or {}).get("comment") or {}
        except ValueError:
            continue
        path = comment.get("path") if isinstance(comment, dict) else None
        if isinstance(path, str) and path and path not in paths:
            paths.append(path)
    return paths
