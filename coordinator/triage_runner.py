"""LLM triage off the request path: classify a pending task, then move it on and send it.

Intake commits a task `pending` (coordinator/intake.insert_pending) and answers the webhook; this
runner, one per coordinator process with a bounded pool of threads, then asks the model
(coordinator/llm_triage.py), records the decision, its reason, confidence and cost on the task and
moves it pending -> triaged in one transaction, and dispatches it (admission applies there). A
task held meanwhile (`waiting`, e.g. for a dependency) gets its decision recorded and is sent by
the scheduler when its reason clears. The reconciler's sweep takes the tasks a stopped coordinator
left waiting for triage once they are older than FORGECREW_TRIAGE_PENDING_GRACE_SECONDS.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from common.db import Database, db_now
from common.models import Task
from common.states import TaskState
from common.transitions import record_note, transition
from coordinator import workflow
from coordinator.dispatch import Dispatcher
from coordinator.intake import AWAITING_LLM_TRIAGE
from coordinator.triage import Triage, TriageDecision

log = logging.getLogger(__name__)
ACTOR = "triage"
# States a task waits for its triage in: pending, or held by admission meanwhile (a dependency)
UNDECIDED = (TaskState.PENDING.value, TaskState.WAITING.value)


def awaiting(task: Task) -> bool:
    """Whether the task still waits for LLM triage's decision."""
    return task.state in UNDECIDED and (task.triage_reason or "").startswith(AWAITING_LLM_TRIAGE)


class TriageRunner:
    """Started on first use; stop() finishes the classifications in flight and drops the queued ones."""

    def __init__(self, db: Database, dispatcher: Dispatcher, *, classifier: Triage | None = None) -> None:
        self.db, self.dispatcher, self.settings = db, dispatcher, db.settings
        self._classifier = classifier
        self._pool = ThreadPoolExecutor(self.settings.triage_concurrency, thread_name_prefix="triage")
        self._lock = threading.Lock()
        self._queued: set[int] = set()  # submitted and not finished: never two classifications of one task here

    @property
    def classifier(self) -> Triage:
        if self._classifier is None:
            from coordinator.llm_triage import LLMTriage

            self._classifier = LLMTriage(self.settings)
        return self._classifier

    def submit(self, task_id: int) -> Future[None] | None:
        """Classify a committed pending task in the background; None when it is already queued here."""
        with self._lock:
            if task_id in self._queued:
                return None
            self._queued.add(task_id)
        return self._pool.submit(self._logged, task_id)

    def stop(self) -> None:
        """What is not classified yet stays pending; the reconciler's sweep takes it after its grace."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def sweep(self) -> list[int]:
        """Claim tasks left waiting for triage past the grace (their coordinator stopped) and classify them.

        The claim is a fresh updated_at under a row lock others skip, so another coordinator's sweep
        leaves them alone for one more grace; as many as the pool can take now.
        """
        with self._lock:
            room = 2 * self.settings.triage_concurrency - len(self._queued)
        if room <= 0:
            return []
        with self.db.session() as session:
            now = db_now(session)
            cutoff = now - timedelta(seconds=self.settings.triage_pending_grace_seconds)
            ids = list(session.scalars(
                select(Task.id).where(Task.state.in_(UNDECIDED), Task.triage_reason.startswith(AWAITING_LLM_TRIAGE),
                                      Task.updated_at < cutoff)
                .order_by(Task.id).limit(room).with_for_update(skip_locked=True)))
            if ids:
                session.execute(update(Task).where(Task.id.in_(ids)).values(updated_at=now)
                                .execution_options(synchronize_session=False))
        for task_id in ids:
            log.info("task %s was left waiting for triage; classifying it now", task_id)
            self.submit(task_id)
        return ids

    def _logged(self, task_id: int) -> None:
        try:
            self.classify(task_id)
        except Exception:  # the pool must outlive one task's failure; the sweep takes it again
            log.exception("triage of task %s failed; it stays pending for the reconciler", task_id)
        finally:
            with self._lock:
                self._queued.discard(task_id)

    def classify(self, task_id: int) -> TriageDecision | None:
        """Decide (no lock held while the model thinks), record, then send; None when nothing was left to decide."""
        with self.db.session() as session:
            task = session.get(Task, task_id)
            if task is None or not awaiting(task):
                return None
            title, body = task.title, task.body
        decision = self.classifier(title=title, body=body, labels=[])
        recorded = self._record(task_id, decision)
        if recorded is None:
            return None
        if recorded.state == TaskState.TRIAGED.value:
            self.dispatcher.dispatch(task_id, actor=ACTOR)  # a broker outage: the reconciler resends it
        return recorded.decision

    def _record(self, task_id: int, decision: TriageDecision) -> _Recorded | None:
        """In one transaction: the decision on the task, a workflow when it names several, pending -> triaged."""
        with self.db.session() as session:
            task = session.get(Task, task_id, with_for_update=True)
            if task is None or not awaiting(task):  # cancelled meanwhile, or another process decided it
                log.info("task %s no longer waits for triage; decision dropped: %s", task_id, decision.reason)
                return None
            if task.workflow_step is not None:  # labels added meanwhile made it a workflow: a person's choice wins
                decision = replace(decision, specialty=task.specialty, specialties=(),
                                   reason=f"kept the workflow labels added meanwhile; {decision.reason}")
            task.specialty, task.triage_reason = decision.specialty, decision.reason
            task.triage_confidence, task.triage_cost_usd = decision.confidence, decision.cost_usd
            decision = self._workflow(session, task, decision)
            task.triage_reason = decision.reason
            cost = f" (cost ${decision.cost_usd:.4f})" if decision.cost_usd is not None else ""
            detail = f"{task.specialty}: {decision.reason}{cost}"
            if task.state == TaskState.PENDING:
                transition(session, task, TaskState.TRIAGED, actor=ACTOR, detail=detail)
            else:  # held meanwhile: the scheduler sends it, as decided here, once its reason clears
                record_note(session, task, actor=ACTOR, detail=detail)
            log.info("task %s triaged: %s", task_id, detail)
            return _Recorded(task.state, decision)

    def _workflow(self, session: Session, task: Task, decision: TriageDecision) -> TriageDecision:
        """Several specialties make a workflow (coordinator/workflow.py); without workflows, the first runs alone."""
        if len(decision.specialties) < 2:
            return decision
        try:
            with session.begin_nested():
                workflow.create_steps(session, task, decision.specialties, self.settings)
        except NotImplementedError:
            return replace(decision, specialties=(), reason=f"{decision.reason}; workflows are not available, "
                                                            f"so {decision.specialty} runs alone")
        return decision


@dataclass(frozen=True)
class _Recorded:
    """The state the task was left in and the decision as recorded."""

    state: str
    decision: TriageDecision
