"""Celery task entry points: thin wrappers that take ids and call plain functions."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from common import canvas
from common.celery_app import RUN_TASK, task_label
from common.models import Task
from coordinator.limits import release_after_run
from workers import workflow
from workers.execute import execute
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)


def register_tasks(app: Celery, runtime: WorkerRuntime, *, enforce_limits: bool = False) -> None:
    """Bind the task bodies to this app and runtime (no module-level app to patch).

    `enforce_limits`: the pool ignores soft and hard time limits (threads, solo), so each task
    enforces the limits its message carries itself (workers.watchdog).
    """

    @app.task(name=RUN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def run_task(self, task_id: int, step: int | None = None) -> str:  # type: ignore[no-untyped-def]
        """`step`: a workflow's link (common/canvas.py) runs that step only, then hands on to the next."""
        if step is not None:
            verdict = workflow.link_verdict(runtime.db, task_id, step)
            if verdict != workflow.RUN:
                _hand_on(app, runtime, self.request, task_id)
                return f"skipped: step {step + 1} is " + ("done" if verdict == workflow.CONTINUE else "not current")
        limits = _limits(app, self.request) if enforce_limits else None
        queue = (self.request.delivery_info or {}).get("routing_key")
        try:
            ended = execute(runtime, task_id, worker=runtime.identity(self.request.hostname), limits=limits,
                            queue=queue)
            # a link, or a plain message that ran a first step (its task became a workflow since)
            if step is not None or self.request.chain or ended.startswith("queued "):
                _hand_on(app, runtime, self.request, task_id)
            return ended
        finally:  # its slot is free now: with a limit on, the next waiting task goes without waiting a sweep
            release_after_run(runtime.db, app, task_id)

    @worker_process_init.connect(weak=False)
    def _after_fork(**_: object) -> None:
        runtime.reset()


def _hand_on(app: Celery, runtime: WorkerRuntime, request: Any, task_id: int) -> None:
    """After a link: let the chain send the next one only if the task waits for exactly that step.

    The record decides, not the canvas: a task failed, cancelled, finished or taken over ends the
    chain here; a chain whose next link is not the step the task waits for (a step added since, a
    plain message that ran a first step) is replaced by one rebuilt from the record.
    """
    waiting = workflow.waiting_step(runtime.db, task_id)
    chain = list(request.chain or [])
    if waiting is None:
        request.chain = None
        return
    position, specialty, count = waiting
    nxt = chain[-1] if chain else None
    options = (nxt or {}).get("options") or {}
    if nxt is not None and (nxt.get("kwargs") or {}).get("step") == position and options.get("queue") == specialty:
        number = canvas.link_number(options.get("task_id"))
        if number is not None:
            workflow.record_next_send(runtime.db, task_id, number)
        return
    request.chain = None
    with runtime.db.session() as session:
        task = session.get(Task, task_id)
        links = canvas.remaining(session, task) if task is not None else []
        label = task_label(task.repo, task.issue_number, specialty, task_id) if task is not None else None
        priority = task.priority if task is not None else 0
    if links:
        canvas.send_workflow(app, runtime.settings, task_id=task_id, links=links, number=count + 1, label=label,
                             priority=priority)
        workflow.record_next_send(runtime.db, task_id, count + 1)


def _limits(app: Celery, request: object) -> tuple[float, float]:
    """(soft, hard) seconds: the message's own (each send sets its specialty's), else the app's defaults."""
    hard = getattr(request, "time_limit", None) or app.conf.task_time_limit
    soft = getattr(request, "soft_time_limit", None) or app.conf.task_soft_time_limit or hard
    return float(soft), float(max(hard, soft))
