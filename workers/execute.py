"""One run of one task on this worker: claim, heartbeat, run the pipeline, report."""

from __future__ import annotations

import logging
from contextlib import nullcontext

from common.forge.factory import make_forge
from common.leases import Heartbeat, claim
from common.models import Task
from workers.pipeline import Pipeline
from workers.runtime import WorkerRuntime
from workers.watchdog import TimeLimits, fail_overrun

log = logging.getLogger(__name__)


def execute(runtime: WorkerRuntime, task_id: int, *, worker: str,
            limits: tuple[float, float] | None = None, queue: str | None = None) -> str:
    """Returns Flower's result column: how the run ended, e.g. `pr_open local://local/calc/pull/1`.

    `limits` (soft, hard seconds) are enforced here when the pool does not (threads, solo).
    """
    db, settings = runtime.db, runtime.settings
    held = claim(db, task_id, worker, queue=queue)
    if held is None:
        return "skipped: not claimable (finished, cancelled, or held by another worker)"
    log.info("task %s: attempt %s claimed by %s", task_id, held.attempt, worker)
    with db.session() as session:
        installation_id = session.get(Task, task_id).installation_id
    watch = (TimeLimits(soft=limits[0], hard=limits[1], task_id=task_id,
                        on_hard=lambda reason: fail_overrun(db, held, reason)) if limits else None)
    with Heartbeat(db, held) as beat, watch or nullcontext():

        def should_stop() -> str | None:
            if watch is not None:
                watch.check()  # past the soft limit: raises, and the run fails with that reason
            return beat.stop_reason()

        pipeline = Pipeline(settings, db, lambda: make_forge(settings, installation_id),
                            llm_factory=runtime.llm,
                            progress=lambda message: log.info("task %s: %s", task_id, message))
        outcome = pipeline.run(held, should_stop=should_stop)
    log.info("task %s: %s %s", task_id, outcome.state, outcome.reason)
    ended = outcome.pr.url if outcome.pr else outcome.reason
    return f"{outcome.state} {ended}".strip()
