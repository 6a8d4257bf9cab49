"""One run of one task on this worker: claim, heartbeat, do the work, report."""

from __future__ import annotations

import logging

from common.leases import Heartbeat, claim
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)


def execute(runtime: WorkerRuntime, task_id: int, *, worker: str) -> str:
    """Returns a short word for Flower's result column: skipped, or how the run ended."""
    held = claim(runtime.db, task_id, worker)
    if held is None:
        return "skipped"
    log.info("task %s: attempt %s claimed by %s", task_id, held.attempt, worker)
    with Heartbeat(runtime.db, held):
        # The agent pipeline (workspace, model, tests, publish) arrives with the next slice;
        # until then a claimed task stays `running` under this worker's lease.
        return "running"
