"""Celery task entry points: thin wrappers that take ids and call plain functions."""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import worker_process_init

from common.celery_app import RUN_TASK
from workers.execute import execute
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)


def register_tasks(app: Celery, runtime: WorkerRuntime, *, enforce_limits: bool = False) -> None:
    """Bind the task bodies to this app and runtime (no module-level app to patch).

    `enforce_limits`: the pool ignores soft and hard time limits (threads, solo), so each task
    enforces the limits its message carries itself (workers.watchdog).
    """

    @app.task(name=RUN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def run_task(self, task_id: int) -> str:  # type: ignore[no-untyped-def]
        limits = _limits(app, self.request) if enforce_limits else None
        queue = (self.request.delivery_info or {}).get("routing_key")
        return execute(runtime, task_id, worker=runtime.identity(self.request.hostname), limits=limits,
                       queue=queue)

    @worker_process_init.connect(weak=False)
    def _after_fork(**_: object) -> None:
        runtime.reset()


def _limits(app: Celery, request: object) -> tuple[float, float]:
    """(soft, hard) seconds: the message's own (each send sets its specialty's), else the app's defaults."""
    hard = getattr(request, "time_limit", None) or app.conf.task_time_limit
    soft = getattr(request, "soft_time_limit", None) or app.conf.task_soft_time_limit or hard
    return float(soft), float(max(hard, soft))
