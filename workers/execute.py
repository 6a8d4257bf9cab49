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
    """Returns Flower's result column: how the run ended, e.g. `pr_open local://local/calc/pull/1`."""
    db, settings = runtime.db, runtime.settings
    held = claim(db, task_id, worker)
    if held is None:
        return "skipped: not claimable (finished, cancelled, or held by another worker)"
    log.info("task %s: attempt %s claimed by %s", task_id, held.attempt, worker)
    with db.session() as session:
        installation_id = session.get(Task, task_id).installation_id
    with Heartbeat(db, held) as beat:
        pipeline = Pipeline(settings, db, lambda: make_forge(settings, installation_id),
                            llm_factory=lambda: LLMClient.from_settings(settings),
                            progress=lambda message: log.info("task %s: %s", task_id, message))
        outcome = pipeline.run(held, should_stop=beat.stop_reason)
    log.info("task %s: %s %s", task_id, outcome.state, outcome.reason)
    ended = outcome.pr.url if outcome.pr else outcome.reason
    return f"{outcome.state} {ended}".strip()
