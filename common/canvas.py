"""A workflow task's message: a Celery chain of its remaining steps, each on its specialty's queue.

The chain is built from the record (workflow_steps), never kept: every send of a workflow task
(first dispatch, a resend after a lost message, a requeue after a reaped lease, a retry) builds it
again from the first step not done. Link i of a chain sent as the task's n-th send has the message
id message_id(task, n + i), so when a step ends and its worker sends the next link, the task's
dispatch_count moves to n + 1 and the reconciler can still ask the broker whether the task's current
message waits there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery, chain
from celery.canvas import Signature
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.celery_app import RETRY_POLICY, RUN_TASK, broker_priority, message_id
from common.models import Task, WorkflowStep
from common.settings import Settings
from common.specialties import time_limits

Link = tuple[int, str]  # (position, specialty) of a step still to run


def remaining(session: Session, task: Task) -> list[Link]:
    """The steps from the task's current one on that are not done; [] for a one-step task."""
    if task.workflow_step is None:
        return []
    rows = session.execute(select(WorkflowStep.position, WorkflowStep.specialty)
                           .where(WorkflowStep.task_id == task.id, WorkflowStep.position >= task.workflow_step,
                                  WorkflowStep.state != "done")
                           .order_by(WorkflowStep.position)).all()
    return [(position, specialty) for position, specialty in rows]


def remaining_by_task(session: Session, task_ids: Sequence[int]) -> dict[int, list[Link]]:
    """remaining() for many tasks in one query (the reconciler's batches); tasks without steps are absent."""
    if not task_ids:
        return {}
    rows = session.execute(
        select(WorkflowStep.task_id, WorkflowStep.position, WorkflowStep.specialty)
        .join(Task, Task.id == WorkflowStep.task_id)
        .where(WorkflowStep.task_id.in_(task_ids), Task.workflow_step.is_not(None),
               WorkflowStep.position >= Task.workflow_step, WorkflowStep.state != "done")
        .order_by(WorkflowStep.task_id, WorkflowStep.position)).all()
    found: dict[int, list[Link]] = {}
    for task_id, position, specialty in rows:
        found.setdefault(task_id, []).append((position, specialty))
    return found


def step_signature(app: Celery, settings: Settings, *, task_id: int, position: int, specialty: str,
                   number: int, label: str | None = None, priority: int = 0) -> Signature:
    """One link: the run task for step `position`, on its specialty's queue with its time limits."""
    soft, hard = time_limits(settings, specialty)
    return app.signature(RUN_TASK, kwargs={"task_id": task_id, "step": position}, immutable=True,
                         queue=specialty, routing_key=specialty, soft_time_limit=soft, time_limit=hard,
                         task_id=message_id(task_id, number), shadow=label,
                         priority=broker_priority(settings, priority))


def workflow_chain(app: Celery, settings: Settings, *, task_id: int, links: Sequence[Link], number: int,
                   label: str | None = None, priority: int = 0) -> Signature:
    """The chain of `links` as send `number` of the task (its first link's message id).

    `label` is the task's (task_label): each link reads `acme/calc#12 frontend (step 2)` in Flower.
    """
    where = (label or "").rsplit(" ", 1)[0]
    return chain(*(step_signature(app, settings, task_id=task_id, position=position, specialty=specialty,
                                  number=number + index, priority=priority,
                                  label=f"{where} {specialty} (step {position + 1})" if where else None)
                   for index, (position, specialty) in enumerate(links)))


def send_workflow(app: Celery, settings: Settings, *, task_id: int, links: Sequence[Link], number: int,
                  label: str | None = None, producer: Any = None, priority: int = 0) -> None:
    """Publish the chain; its first link goes to the broker now, each next one when a step ends."""
    if not links:
        raise ValueError(f"task {task_id}: a workflow send needs at least one step still to run")
    canvas = workflow_chain(app, settings, task_id=task_id, links=links, number=number, label=label,
                            priority=priority)
    canvas.apply_async(retry=True, retry_policy=RETRY_POLICY, producer=producer)


def link_number(message: str | None) -> int | None:
    """The send number in one of our message ids (`forgecrew-task-12-3` -> 3); None for another id."""
    if not message:
        return None
    head, _, tail = message.rpartition("-")
    return int(tail) if head and tail.isdigit() else None
