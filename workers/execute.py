"""One run of one task on this worker: claim, heartbeat, run the pipeline, report."""

from __future__ import annotations

import logging

from common.forge.factory import make_forge
from common.leases import Heartbeat, claim
from common.models import Task
from workers.llm import LLMClient
from workers.pipeline import Pipeline
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)


def execute(runtime: WorkerRuntime, task_id: int, *, worker: str) -> str:
    """Returns a short word for Flower's result column: skipped, or the state the run ended in."""
    db, settings = runtime.db, runtime.settings
    held = claim(db, task_id, worker)
    if held is None:
        return "skipped"
    log.info("task %s: attempt %s claimed by %s", task_id, held.attempt, worker)
    with db.session() as session:
        installation_id = session.get(Task, task_id).installation_id
    with Heartbeat(db, held) as beat:
        pipeline = Pipeline(settings, db, lambda: make_forge(settings, installation_id),
                            llm_factory=lambda: LLMClient.from_settings(settings),
                            progress=lambda message: log.info("task %s: %s", task_id, message))
        outcome = pipeline.run(held, should_stop=lambda: "lost the task's lease" if beat.lost.is_set() else None)
    log.info("task %s: %s %s", task_id, outcome.state, outcome.reason)
    return outcome.state
