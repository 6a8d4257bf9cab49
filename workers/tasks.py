"""Celery task entry points: thin wrappers that take ids and call plain functions."""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import worker_process_init

from common.celery_app import RUN_TASK
from workers.execute import execute
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)


def register_tasks(app: Celery, runtime: WorkerRuntime) -> None:
    """Bind the task bodies to this app and runtime (no module-level app to patch)."""

    @app.task(name=RUN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def run_task(self, task_id: int) -> str:  # type: ignore[no-untyped-def]
        return execute(runtime, task_id, worker=runtime.identity(self.request.hostname))

    @worker_process_init.connect(weak=False)
    def _after_fork(**_: object) -> None:
        runtime.reset()
