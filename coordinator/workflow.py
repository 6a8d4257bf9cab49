"""Multi-specialty workflows: one task, several specialties' steps, one branch and one PR.

The steps are rows (common.models.WorkflowStep), so PostgreSQL, not the Celery canvas, is the
record: the canvas (common/canvas.py) is rebuilt from the first step not done whenever the task is
sent, a done step never runs again, and a retry resumes at the step that failed.

Order: `workflow_order` (default backend, frontend, devops, testing) ranks the specialties; one it
does not list runs just before `testing` (or last when `testing` is not listed), in the order the
issue's labels gave it, so tests still come last.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.models import Task, WorkflowStep
from common.settings import Settings
from common.specialties import profiles
from common.states import TaskState
from common.transitions import record_note
from coordinator.triage import path_matches

# A task still waiting for its first worker: a step may go anywhere in its order, even first.
NOT_STARTED = (TaskState.PENDING, TaskState.TRIAGED, TaskState.QUEUED, TaskState.WAITING)
LAST = "testing"  # the specialty unlisted ones go before


def ordered(specialties: Sequence[str], settings: Settings) -> list[str]:
    """The specialties once each, in the order their steps run."""
    given = list(dict.fromkeys(s for s in specialties if s))
    order = [name for name in settings.workflow_order if name]
    tail = order.index(LAST) if LAST in order else len(order)
    before = [name for name in order[:tail] if name in given]
    after = [name for name in order[tail:] if name in given]
    return before + [name for name in given if name not in order] + after


def create_steps(session: Session, task: Task, specialties: Sequence[str], settings: Settings) -> None:
    """Make `task` a workflow of these specialties (ordered by settings), in the caller's transaction.

    Fewer than two distinct specialties make no workflow: the task stays a one-step task of the one.
    """
    names = ordered(specialties, settings)
    if len(names) < 2:
        return
    for position, specialty in enumerate(names):
        session.add(WorkflowStep(task_id=task.id, position=position, specialty=specialty, state="pending"))
    task.specialty, task.workflow_step = names[0], 0
    record_note(session, task, actor="triage", detail="workflow of " + " → ".join(names))


def steps_of(session: Session, task_id: int) -> list[WorkflowStep]:
    return list(session.scalars(select(WorkflowStep).where(WorkflowStep.task_id == task_id)
                                .order_by(WorkflowStep.position)))


def add_step(session: Session, task: Task, specialty: str, settings: Settings) -> str:
    """A specialty label added to an issue whose task is active: a step for it when the workflow can take one.

    A task no worker has started becomes (or stays) a workflow with the step wherever the order puts
    it; a started workflow takes it only among its steps still to come (pending ones after the current
    step). Returns what happened, for the delivery's outcome; `added` starts the text when it changed.
    """
    if task.workflow_step is None:
        if task.specialty == specialty:
            return f"task {task.id} already runs as {specialty}"
        if TaskState(task.state) not in NOT_STARTED:
            return f"task {task.id} is already {task.state} as {task.specialty}; {specialty} is not added"
        create_steps(session, task, [task.specialty, specialty], settings)
        return f"added: task {task.id} is now a workflow of " + " → ".join(s.specialty for s in steps_of(session, task.id))
    steps = steps_of(session, task.id)
    if any(step.specialty == specialty for step in steps):
        return f"task {task.id} already has a {specialty} step"
    started = TaskState(task.state) not in NOT_STARTED or task.workflow_step > 0
    names = ordered([*(s.specialty for s in steps), specialty], settings)
    index = names.index(specialty)
    fixed = task.workflow_step + (1 if started else 0)  # steps done or running keep their places
    if index < fixed:
        return (f"task {task.id}'s workflow is past where {specialty} would run "
                f"(step {task.workflow_step + 1} of {len(steps)}); {specialty} is not added")
    later = [step for step in steps if step.position >= index]
    for step in sorted(later, key=lambda s: -s.position):  # make room from the end: (task, position) is unique
        step.position += 1
        session.flush()
    session.add(WorkflowStep(task_id=task.id, position=index, specialty=specialty, state="pending"))
    if index == task.workflow_step:  # the new step runs first (the task has not started)
        task.specialty = specialty
    session.flush()
    record_note(session, task, actor="triage", detail=f"{specialty} step added to the workflow: " + " → ".join(
        s.specialty for s in steps_of(session, task.id)))
    return f"added: {specialty} step to task {task.id}'s workflow (step {index + 1})"


def resume(session: Session, task: Task) -> str | None:
    """On a retry: the first step not done becomes current again; done steps stay done. None: no workflow."""
    if task.workflow_step is None:
        return None
    steps = steps_of(session, task.id)
    current = next((step for step in steps if step.state != "done"), None)
    if current is None:
        return None
    for step in steps:
        if step.state != "done":
            step.state, step.detail = "pending", None
    task.workflow_step, task.specialty = current.position, current.specialty
    return f"resuming at step {current.position + 1} of {len(steps)} ({current.specialty})"


def followup_specialty(steps: Sequence[WorkflowStep], paths: Sequence[str], settings: Settings) -> str:
    """Who takes a follow-up on a workflow's PR: the latest step that changed a file the comments point at,
    else the specialty whose path globs match one, else the last step's specialty."""
    if not steps:
        raise ValueError("a workflow has steps")
    for step in sorted(steps, key=lambda s: -s.position):
        changed = set(json.loads(step.files or "[]"))
        if any(path in changed for path in paths):
            return step.specialty
    known = profiles(settings)
    for path in paths:
        for step in sorted(steps, key=lambda s: -s.position):
            profile = known.get(step.specialty)
            if profile and any(path_matches(path, glob) for glob in profile.path_globs):
                return step.specialty
    return max(steps, key=lambda s: s.position).specialty
