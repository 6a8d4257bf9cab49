"""Whether a task may go to its queue now; if not, it waits in `waiting` and says why.

Every check is one function `(session, task, settings) -> reason | None`, in its own module:
dependencies ("depends on #N", coordinator/dependencies.py), overlapping work the repository
serializes (coordinator/overlap.py), and the repository, installation and requester limits
(coordinator/limits.py). A waiting task holds no worker and no broker message; `Scheduler.release`
sends the ones whose reason has cleared, the highest priority first and then the oldest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.db import Database, db_now
from common.models import Task
from common.settings import Settings
from common.states import TaskState
from common.transitions import transition
from coordinator import limits

log = logging.getLogger(__name__)
ACTOR = "scheduler"

HoldCheck = Callable[[Session, Task, Settings], "str | None"]


def checks() -> Sequence[HoldCheck]:
    """In the order a person reads the reason: what it waits for first, then for whom it waits."""
    from coordinator import dependencies, overlap

    return (dependencies.hold_reason, overlap.hold_reason, limits.hold_reason)


def hold_reason(session: Session, task: Task, settings: Settings) -> str | None:
    """Why `task` must wait now, or None when it may be sent."""
    for check in checks():
        reason = check(session, task, settings)
        if reason:
            return reason
    return None


def hold(session: Session, task: Task, reason: str, *, actor: str = ACTOR) -> None:
    """Move the task to waiting with `reason` (a new reason on a waiting task is recorded too)."""
    if task.state == TaskState.WAITING and task.wait_reason == reason:
        return
    if task.state != TaskState.WAITING:
        task.waiting_since = db_now(session)
    task.wait_reason = reason
    transition(session, task, TaskState.WAITING, actor=actor, detail=f"waiting: {reason}")


def admit(session: Session, task: Task, settings: Settings, *, actor: str = ACTOR) -> bool:
    """True when the task may be sent now; otherwise it is moved to waiting (in the caller's transaction).

    With a limit on (`gated`), an admitted triaged task moves to queued in this same transaction:
    it then takes its slot before the lock is released, so the next admitter counts it.
    """
    reason = hold_reason(session, task, settings)
    if reason is None:
        if task.state == TaskState.TRIAGED and gated(settings):
            task.dispatched_at = db_now(session)  # reserved: the reconciler leaves it to this send
            transition(session, task, TaskState.QUEUED, actor=actor, detail=f"admitted to queue {task.specialty}")
        return True
    hold(session, task, reason, actor=actor)
    return False


def gated(settings: Settings) -> bool:
    """Whether the batched sends (intake's Sender, the reconciler) must admit each task first.

    False with no limit configured: the webhook hot path then sends as it always did.
    """
    return limits.configured(settings)


def admit_many(session: Session, task_ids: Sequence[int], settings: Settings, *,
               actor: str = ACTOR) -> set[int]:
    """admit() for a batch of sendable tasks in one transaction; the ids that may be sent now."""
    tasks = session.scalars(select(Task).where(Task.id.in_(task_ids),
                                               Task.state.in_([TaskState.TRIAGED.value, TaskState.QUEUED.value]))
                            .order_by(Task.id).with_for_update()).all()
    limits.lock(session, tasks, settings)
    return {task.id for task in tasks if admit(session, task, settings, actor=actor)}


class Scheduler:
    """Releases waiting tasks; run by the reconciler each round and by whatever frees a slot."""

    def __init__(self, db: Database, dispatcher: object) -> None:
        self.db = db
        self.dispatcher = dispatcher  # coordinator.dispatch.Dispatcher (typed loosely: it imports this module)

    def release(self, *, repo: str | None = None, actor: str = ACTOR) -> list[int]:
        """Send every waiting task (of `repo`, if given) whose reason has cleared; their ids.

        One transaction decides, in priority then age order, so a limit of N releases at most N:
        each release is seen by the next task's check. Rows another coordinator holds are skipped.
        """
        released: list[int] = []
        with self.db.session() as session:
            query = select(Task).where(Task.state == TaskState.WAITING.value)
            if repo is not None:
                query = query.where(Task.repo == repo)
            waiting = session.scalars(query.order_by(Task.priority.desc(), Task.id)
                                      .with_for_update(skip_locked=True)).all()
            limits.lock(session, waiting, self.db.settings)  # all at once, in one order: no deadlock
            for task in waiting:
                reason = hold_reason(session, task, self.db.settings)
                if reason is not None:
                    hold(session, task, reason, actor=actor)  # it may wait for something else now
                    continue
                waited = task.wait_reason
                task.wait_reason, task.waiting_since, task.dispatched_at = None, None, None
                transition(session, task, TaskState.QUEUED, actor=actor, detail=f"released (was: {waited})")
                session.flush()  # the next task's checks count this one as sent
                released.append(task.id)
        for task_id in released:  # unsent ones (broker down) are the reconciler's "requeued run"
            self.dispatcher.dispatch(task_id, actor=actor, note="released")  # type: ignore[attr-defined]
        if released:
            log.info("scheduler released %s", released)
        return released

    def sweep(self) -> None:
        """The reconciler's round: anything may have cleared (a merge, a closed issue, a day gone by)."""
        self.release()
