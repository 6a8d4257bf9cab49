"""What an operator can do to tasks (submit, retry, cancel, approve or revise a plan): one layer under the CLI,
the REST API and comment commands.

Each call commits its state change first and talks to the broker after, as intake does: a
broker that is down never loses the change, the reconciler sends what could not be sent.
Every answer is task_detail's plain dict; every refusal is a specific ForgecrewError:
TaskNotFound, TaskConflict (the state does not allow it) or InvalidRequest (bad input).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from celery import Celery
from sqlalchemy.orm import Session, selectinload

from common.celery_app import message_id
from common.db import Database
from common.errors import InvalidRequest, TaskConflict, TaskNotFound
from common.forge.factory import make_forge
from common.leases import release
from common.models import Task
from common.serialize import task_detail
from common.specialties import profiles
from common.states import TaskState
from common.transitions import record_note, transition
from coordinator import limits, workflow
from coordinator.admission import Scheduler
from coordinator.dispatch import BROKER_ERRORS, Dispatcher
from coordinator.intake import ActiveTaskExists, NewTask, active_task_id, create_task
from coordinator.triage import RuleTriage, TriageDecision

log = logging.getLogger(__name__)

S = TaskState
RETRYABLE = frozenset({S.FAILED, S.CANCELLED})
# pr_open too: a person may want the task closed without waiting for the PR to be merged or closed
CANCELLABLE = frozenset({S.PENDING, S.TRIAGED, S.QUEUED, S.RUNNING, S.TESTING, S.PR_OPEN, S.AWAITING_APPROVAL,
                         S.WAITING})
# What a revision request may carry into the next planning run's prompt.
CHANGES_LIMIT = 4_000
REPO_NAME = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


class Operations:
    """Submit, retry and cancel tasks, with the same rules and audit trail whoever asks."""

    def __init__(self, db: Database, dispatcher: Dispatcher, celery: Celery) -> None:
        self.db = db
        self.dispatcher = dispatcher
        self.celery = celery
        self.settings = db.settings

    def submit(self, *, repo: str, issue: int | None, title: str | None, body: str = "",
               specialty: str | None = None, requested_by: str, instruction: str = "") -> dict[str, Any]:
        """Create and dispatch a task without a webhook: for an issue (read from the forge) or a title.

        Raises InvalidRequest for bad input, TaskConflict when the issue already has an active task,
        and the forge's ForgeError when the issue cannot be read.
        """
        if not REPO_NAME.match(repo) or ".." in repo:
            raise InvalidRequest(f"repository must be owner/name, got {repo!r}")
        if issue is None and not (title or "").strip():
            raise InvalidRequest("give an issue number, or a title (and optionally a body) for work without one")
        if issue is not None and issue < 1:
            raise InvalidRequest(f"issue numbers start at 1, got {issue}")
        known = profiles(self.settings)
        chosen = [name.strip() for name in (specialty or "").split(",") if name.strip()]  # several: a workflow
        unknown = [name for name in chosen if name not in known]
        if unknown:
            raise InvalidRequest(f"unknown specialty {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
        labels: list[str] = []
        if issue is not None:  # the forge's copy, as a webhook would have carried it
            info = make_forge(self.settings).get_issue(repo, issue)
            title, body, labels = info.title, info.body, list(info.labels)
        title, body = title or "", body or ""
        if instruction.strip():  # an @mention's request: the agent reads it with the issue
            body = f"{body}\n\n## Request from @{requested_by}\n\n{instruction.strip()}".strip()
        decision = (TriageDecision(chosen[0], f"chosen by {requested_by}", specialties=tuple(chosen)) if chosen
                    else RuleTriage(known)(title=title, body=body, labels=labels))
        new = NewTask(repo, issue, title, body, requested_by=requested_by,
                      installation_id=self.settings.github_app_installation_id)
        with self.db.session() as session:
            try:
                task = create_task(session, new, decision, actor=requested_by)
                task_id = task.id
                if len(decision.specialties) > 1:
                    workflow.create_steps(session, task, decision.specialties, self.settings)
            except ActiveTaskExists as exc:
                raise TaskConflict(f"issue {repo}#{issue} already has active task {exc.task_id}; cancel it "
                                   "first or let it finish", task_id=exc.task_id) from None
        self.dispatcher.dispatch(task_id, actor=requested_by)
        return self._detail(task_id)

    def retry(self, task_id: int, *, actor: str) -> dict[str, Any]:
        """Queue a failed or cancelled task again (a new attempt) and send it."""
        with self.db.session() as session:
            task = self._locked(session, task_id)
            state = TaskState(task.state)
            if state not in RETRYABLE:
                raise TaskConflict(f"task {task_id} is {state.value}; only failed or cancelled tasks can be "
                                   "retried" + _hint(state), task_id=task_id, state=state.value)
            if task.issue_number is not None:
                other = active_task_id(session, task.repo, task.issue_number)
                if other is not None:
                    raise TaskConflict(f"issue {task.repo}#{task.issue_number} already has active task {other}; "
                                       f"cancel it before retrying task {task_id}", task_id=other,
                                       state=state.value)
            resumed = workflow.resume(session, task)  # a workflow: from its failed step, done steps stay done
            transition(session, task, S.QUEUED, actor=actor, detail=f"retry requested (was {state.value})"
                       + (f"; {resumed}" if resumed else ""))
            task.failure_reason = None
            task.dispatched_at = None  # unsent until the send below; the reconciler resends it if that fails
        self.dispatcher.dispatch(task_id, actor=actor)
        return self._detail(task_id)

    def approve(self, task_id: int, *, by: str, actor: str) -> dict[str, Any]:
        """Run the change with the plan the task waits on: awaiting_approval -> queued, sent as a retry is.

        `by` is the person who approved (for the event and the next run's prompt); the worker that
        claims the task sees the approval and runs the change with the plan in its first message.
        """
        with self.db.session() as session:
            task = self._waiting(session, task_id, "approved")
            task.plan_approved_by = by[:100]
            transition(session, task, S.QUEUED, actor=actor,
                       detail=f"plan revision {task.plan_revision} approved by {by}")
            task.dispatched_at = None
        self.dispatcher.dispatch(task_id, actor=actor)
        return self._detail(task_id)

    def revise_plan(self, task_id: int, changes: str, *, by: str, actor: str) -> dict[str, Any]:
        """Queue a new planning run that reads the waiting plan and `changes`; it posts the revised plan."""
        changes = changes.strip()
        if not changes:
            raise InvalidRequest("say what to change in the plan, e.g. `@forgecrew also handle negative numbers`")
        with self.db.session() as session:
            task = self._waiting(session, task_id, "revised")
            task.plan_feedback = changes[:CHANGES_LIMIT]
            transition(session, task, S.QUEUED, actor=actor,
                       detail=f"revision of plan {task.plan_revision} asked by {by}: {changes[:500]}")
            task.dispatched_at = None
        self.dispatcher.dispatch(task_id, actor=actor)
        return self._detail(task_id)

    def cancel(self, task_id: int, *, actor: str, reason: str = "") -> dict[str, Any]:
        """Cancel a task that is not finished; a running worker sees it at its next step and stops.

        The lease is cleared with the state change, so every fenced write the worker still tries
        fails: it neither overwrites the state nor pushes. The task's queued messages are revoked
        so no worker starts it; one that slips through is skipped by claim() anyway.
        """
        with self.db.session() as session:
            task = self._locked(session, task_id)
            state = TaskState(task.state)
            if state not in CANCELLABLE:
                raise TaskConflict(f"task {task_id} is already {state.value}; there is nothing to cancel",
                                   task_id=task_id, state=state.value)
            detail = reason.strip() or f"cancelled while {state.value}"
            if state is S.PR_OPEN and task.pr_url:
                detail += f" (pull request {task.pr_url} stays open; close it on the forge if unwanted)"
            transition(session, task, S.CANCELLED, actor=actor, detail=detail[:1000])
            release(task)
            sends, repo = task.dispatch_count, task.repo
        self._revoke(task_id, sends)
        if state in limits.IN_FLIGHT:  # its slot is free: the next waiting task goes now
            limits.release_freed(Scheduler(self.db, self.dispatcher), self.settings, repo)
        return self._detail(task_id)

    def route(self, task_id: int, specialty: str, *, actor: str) -> dict[str, Any]:
        """Move a task that no worker has started to another specialty's queue.

        Its earlier messages are revoked, and a worker that still gets one skips it (claim() checks
        the message's queue against the task's specialty), so only the new queue runs it.
        """
        known = profiles(self.settings)
        if specialty not in known:
            raise InvalidRequest(f"unknown specialty {specialty!r}; known: {', '.join(known)}")
        with self.db.session() as session:
            task = self._locked(session, task_id)
            state = TaskState(task.state)
            if state not in (S.TRIAGED, S.QUEUED):
                raise TaskConflict(f"task {task_id} is {state.value}; only a task no worker has started can be "
                                   "routed (cancel it, then retry it once routed)", task_id=task_id,
                                   state=state.value)
            if task.specialty == specialty:
                raise TaskConflict(f"task {task_id} is already on {specialty}", task_id=task_id, state=state.value)
            if task.workflow_step is not None:  # a workflow: the current step changes specialty
                steps = workflow.steps_of(session, task_id)
                if any(step.specialty == specialty for step in steps):
                    raise TaskConflict(f"task {task_id}'s workflow already has a {specialty} step", task_id=task_id,
                                       state=state.value)
                next(step for step in steps if step.position == task.workflow_step).specialty = specialty
            previous, task.specialty = task.specialty, specialty
            record_note(session, task, actor=actor, detail=f"routed from {previous} to {specialty}")
            sends = task.dispatch_count
        self._revoke(task_id, sends)
        self.dispatcher.dispatch(task_id, actor=actor, note=f"routed to {specialty}")
        return self._detail(task_id)

    # -- helpers -----------------------------------------------------------------------------

    def _revoke(self, task_id: int, sends: int) -> None:
        """Tell workers to drop the task's messages; best effort, claim() refuses a cancelled task."""
        ids = [message_id(task_id, number) for number in range(1, sends + 1)]
        if not ids:
            return
        try:
            self.celery.control.revoke(ids)
        except BROKER_ERRORS as exc:
            log.warning("task %s: could not revoke its messages (%s: %s); a worker that gets one skips it",
                        task_id, type(exc).__name__, exc)

    def _waiting(self, session: Session, task_id: int, verb: str) -> Task:
        """The task, locked, if its plan waits for approval; else TaskConflict saying why not."""
        task = self._locked(session, task_id)
        state = TaskState(task.state)
        if state is not S.AWAITING_APPROVAL:
            raise TaskConflict(f"task {task_id} is {state.value}, not waiting for a plan's approval, so nothing "
                               f"can be {verb}{_plan_hint(task, state)}", task_id=task_id, state=state.value)
        return task

    @staticmethod
    def _locked(session: Session, task_id: int) -> Task:
        task = session.get(Task, task_id, with_for_update=True)
        if task is None:
            raise TaskNotFound(task_id)
        return task

    def _detail(self, task_id: int) -> dict[str, Any]:
        with self.db.session() as session:
            task = session.get(Task, task_id, options=[selectinload(Task.events), selectinload(Task.runs),
                                                   selectinload(Task.steps)],
                               populate_existing=True)
            if task is None:
                raise TaskNotFound(task_id)
            return task_detail(task)


def _plan_hint(task: Task, state: TaskState) -> str:
    """Why a task has no plan to approve or revise, and what would give it one."""
    if task.plan_approved_by:
        return f"; its plan was approved by {task.plan_approved_by} already"
    if state in (S.QUEUED, S.RUNNING) and task.plan_feedback:
        return "; a revised plan is being written and will be posted on the issue"
    if task.plan is None and state in (S.PENDING, S.TRIAGED, S.QUEUED, S.RUNNING, S.TESTING):
        return ("; it is working without a plan (add the `forgecrew:plan` label, or `plan_first: true` in "
                ".forgecrew.yml, before a task starts to get a plan first)")
    return ""


def _hint(state: TaskState) -> str:
    if state is S.AWAITING_APPROVAL:
        return "; its plan waits for approval: comment `/forgecrew approve`, or cancel it to start over"
    if state in (S.PENDING, S.TRIAGED, S.QUEUED, S.RUNNING, S.TESTING):
        return "; it is still in flight (cancel it first to start over)"
    if state is S.PR_OPEN:
        return "; its pull request is open: comment on it for a follow-up, or cancel the task first"
    return ""
