"""A workflow's steps as a worker keeps them: which step a link runs, what earlier steps did, a step's end.

PostgreSQL is the record (workflow_steps); the Celery chain only carries the next link. A step's
end is one fenced transaction: the step is done (summary, commit, files, tests, tokens, cost, run)
and the task is queued at the next step with its lease released, so a worker killed after it never
runs the step again, and one killed before it leaves the step to run again from the branch as last
pushed. A step's commit carries the trailer `Forgecrew-Step: <task>/<position>`: a run that finds
its own step's commit already on the branch (pushed by a worker killed before recording it)
records the step done instead of running it again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from common.db import Database, db_now
from common.forge.base import Forge
from common.leases import Claim, load_fenced, release
from common.models import Task, WorkflowStep
from common.redact import Redactor
from common.gitsafe import run_git
from common.settings import Settings
from common.states import TaskState
from common.transitions import transition
from workers.change import build_change
from workers.llm import Usage
from workers.testrun import TestResult
from workers.workspace import Workspace

TRAILER = "Forgecrew-Step"
FILES_LIMIT = 200

RUN, CONTINUE, STOP = "run", "continue", "stop"  # what a link does (link_verdict)


@dataclass(frozen=True)
class StepRecord:
    """One step as the next steps, the PR body and the follow-up routing read it."""

    position: int
    specialty: str
    state: str
    summary: str = ""
    commit_sha: str | None = None
    files: tuple[str, ...] = ()
    tests: str = ""
    tests_passed: bool | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None


@dataclass(frozen=True)
class WorkflowState:
    """The task's steps and which one this run is."""

    steps: tuple[StepRecord, ...]
    position: int

    @property
    def current(self) -> StepRecord:
        return self.steps[self.position]

    @property
    def last(self) -> bool:
        return self.position == len(self.steps) - 1

    @property
    def previous(self) -> tuple[StepRecord, ...]:
        return tuple(step for step in self.steps if step.position < self.position)

    def name(self) -> str:
        """`step 2 of 3 (frontend)`: how the issue, the events and the failure reason name it."""
        return f"step {self.position + 1} of {len(self.steps)} ({self.current.specialty})"


def record_of(step: WorkflowStep) -> StepRecord:
    return StepRecord(step.position, step.specialty, step.state, step.summary or "", step.commit_sha,
                      tuple(json.loads(step.files or "[]")), step.tests or "", step.tests_passed,
                      step.input_tokens or 0, step.output_tokens or 0, step.cost_usd)


def load_state(db: Database, task_id: int) -> WorkflowState | None:
    """The task's workflow as it stands; None for a one-step task."""
    with db.session() as session:
        task = session.get(Task, task_id)
        if task is None or task.workflow_step is None:
            return None
        steps = tuple(record_of(step) for step in _steps(session, task_id))
        if not steps:
            return None
        return WorkflowState(steps, min(task.workflow_step, len(steps) - 1))


def link_verdict(db: Database, task_id: int, position: int) -> str:
    """RUN the step, CONTINUE the chain past it (the step is done), or STOP (the link is stale).

    A link is the current step's: it runs (the claim then decides whether this worker may). A link
    for a step already done runs nothing, and lets the chain go on only while the task waits for its
    next step (a worker killed after recording its step, before sending the next link); any other
    link (a step not current, a workflow stopped) does nothing.
    """
    with db.session() as session:
        task = session.get(Task, task_id)
        if task is None or task.workflow_step is None:
            return RUN if position == 0 else STOP  # a one-step task again (rerouted): only the first link
        step = session.scalar(select(WorkflowStep).where(WorkflowStep.task_id == task_id,
                                                         WorkflowStep.position == position))
        if step is None:
            return STOP
        if step.state == "done":
            return CONTINUE if task.state == TaskState.QUEUED and task.workflow_step > position else STOP
        return RUN if task.workflow_step == position else STOP


def waiting_step(db: Database, task_id: int) -> tuple[int, str, int] | None:
    """(position, specialty, dispatch_count) of the step the task is queued for; None when it waits for none."""
    with db.session() as session:
        task = session.get(Task, task_id)
        if task is None or task.workflow_step is None or task.state != TaskState.QUEUED:
            return None
        return task.workflow_step, task.specialty, task.dispatch_count


def record_next_send(db: Database, task_id: int, number: int) -> None:
    """The next link (send `number`) is the task's current message now: the reconciler looks for its id."""
    with db.session() as session:
        session.execute(update(Task).where(Task.id == task_id, Task.state == TaskState.QUEUED.value,
                                           Task.dispatch_count < number)
                        .values(dispatch_count=number, dispatched_at=db_now(session))
                        .execution_options(synchronize_session=False))


def start_step(db: Database, held: Claim, position: int, run_id: int) -> None:
    """The step is running (again): its run, and when it started."""
    with db.session() as session:
        load_fenced(session, held)
        step = _step(session, held.task_id, position)
        step.state, step.run_id, step.detail = "running", run_id, None
        step.started_at, step.finished_at = db_now(session), None


@dataclass(frozen=True)
class StepResult:
    summary: str
    commit_sha: str | None
    files: tuple[str, ...]
    tests: TestResult | None
    usage: Usage
    cost_usd: float | None


def complete(session: Session, task: Task, position: int, result: StepResult, run_id: int | None) -> WorkflowStep:
    """Mark the step done, in the caller's (fenced) transaction."""
    step = _step(session, task.id, position)
    step.state, step.summary, step.commit_sha = "done", result.summary[:8000], result.commit_sha
    step.files = json.dumps(list(result.files[:FILES_LIMIT]))
    step.tests = result.tests.headline()[:1000] if result.tests else "no tests found"
    step.tests_passed = result.tests.passed if result.tests else None
    step.input_tokens, step.output_tokens, step.cost_usd = result.usage.input_tokens, result.usage.output_tokens, \
        result.cost_usd
    step.run_id = run_id if run_id is not None else step.run_id
    step.finished_at, step.detail = db_now(session), None
    return step


def advance(db: Database, held: Claim, state: WorkflowState, result: StepResult, run_id: int | None) -> str:
    """End an intermediate step: done, and the task queued for the next, lease released, in one transaction.

    The task is marked as just sent (dispatched_at now): the chain's next link is on its way from
    this worker, and the reconciler resends only if it never arrives (QUEUED_RESEND_SECONDS).
    """
    nxt = state.steps[state.position + 1]
    pushed = f"pushed {result.commit_sha[:12]}" if result.commit_sha else "changed nothing"
    detail = f"{state.name()} done ({pushed}); next: step {nxt.position + 1} ({nxt.specialty})"
    with db.session() as session:
        row = load_fenced(session, held)
        complete(session, row, state.position, result, run_id)
        row.workflow_step, row.specialty = nxt.position, nxt.specialty
        row.attempt = 0  # MAX_ATTEMPTS counts each step's runs: a worker lost in step 3 is not a third attempt
        row.dispatched_at = db_now(session)
        transition(session, row, TaskState.QUEUED, actor=held.owner, detail=detail[:1000])
        release(row)
    return detail


def fail_step(session: Session, task_id: int, position: int, reason: str) -> None:
    step = _step(session, task_id, position)
    if step.state != "done":
        step.state, step.detail, step.finished_at = "failed", reason[:4000], db_now(session)


def trailer(task_id: int, position: int) -> str:
    return f"{TRAILER}: {task_id}/{position}"


def step_message(title: str, issue_number: int | None, specialty: str, summary: str, task_id: int,
                 position: int) -> str:
    """A step's commit message: what the step did, and the trailer that proves it was pushed."""
    ref = f"#{issue_number} " if issue_number else ""
    return (f"{ref}{specialty}: {title}"[:200] + f"\n\n{summary.strip()[:2000]}\n\n"
            + trailer(task_id, position) + "\n")


def pushed_step(git_dir: Path, base_sha: str, head_sha: str, task_id: int, position: int) -> tuple[str, str] | None:
    """(commit, summary) of this step's commit on the branch (base..head), if a run already pushed it."""
    if not base_sha or not head_sha or base_sha == head_sha:
        return None
    done = run_git(["--git-dir", str(git_dir), "log", "--format=%H%x00%B%x01", f"{base_sha}..{head_sha}"])
    if done.returncode != 0:
        return None
    wanted = re.compile(rf"^{re.escape(trailer(task_id, position))}\s*$", re.M)
    for entry in done.stdout.split("\x01"):
        sha, _, body = entry.strip().partition("\x00")
        if sha and wanted.search(body):
            text = wanted.sub("", body).strip()
            summary = text.split("\n\n", 1)[1].strip() if "\n\n" in text else ""
            return sha, summary
    return None


def changed_files(git_dir: Path, parent: str, commit: str) -> tuple[str, ...]:
    done = run_git(["--git-dir", str(git_dir), "diff-tree", "-r", "-z", "--no-renames", "--name-only", parent,
                    commit])
    return tuple(sorted(name for name in done.stdout.split("\0") if name)) if done.returncode == 0 else ()


def branch_log(git_dir: Path | None, base_sha: str, head_sha: str, limit: int = 50) -> str:
    """`git log --stat base..head` of the branch so far: the earlier steps' commits, for the next step."""
    if git_dir is None or not base_sha or not head_sha or base_sha == head_sha:
        return ""
    done = run_git(["--git-dir", str(git_dir), "log", "--no-color", f"--max-count={limit}", "--format=%h %s",
                    "--name-status", f"{base_sha}..{head_sha}"])
    return done.stdout.strip() if done.returncode == 0 else ""


def push_step(forge: Forge, settings: Settings, workspace: Workspace, message: str, redact: Redactor, *,
              fence: Callable[[], None]) -> tuple[str | None, tuple[str, ...]]:
    """Commit an intermediate step's change on top of the branch and push it; (None, ()) when it changed nothing.

    Pushed only if the branch is still where the run found it (the forge refuses otherwise): a person's
    push meanwhile fails the step instead of being overwritten.
    """
    from workers.publish import refuse_others_commits

    change = build_change(workspace, redact(message), author=(settings.bot_name, settings.bot_email),
                          contains_secret=redact.contains)
    if change is None:
        return None, ()
    refuse_others_commits(workspace, change.git_dir, settings.bot_email)
    fence()
    forge.push_branch(workspace.repo, source=change.git_dir, commit=change.commit, branch=workspace.branch,
                      expected=workspace.remote_branch_sha)
    workspace.record_push(change.commit)
    return change.commit, changed_files(change.git_dir, change.parent, change.commit)


def _steps(session: Session, task_id: int) -> list[WorkflowStep]:
    return list(session.scalars(select(WorkflowStep).where(WorkflowStep.task_id == task_id)
                                .order_by(WorkflowStep.position)))


def _step(session: Session, task_id: int, position: int) -> WorkflowStep:
    step = session.scalar(select(WorkflowStep).where(WorkflowStep.task_id == task_id,
                                                     WorkflowStep.position == position))
    if step is None:
        raise LookupError(f"task {task_id} has no workflow step {position}")
    return step
