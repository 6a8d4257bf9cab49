"""Periodic repair: resend tasks whose send failed or was lost, requeue runs whose worker died."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from common.db import Database, db_now
from common.leases import release
from common.models import Task, TaskRun
from common.states import LEASED_STATES, TaskState
from common.transitions import transition
from coordinator.dispatch import Dispatcher

log = logging.getLogger(__name__)
ACTOR = "reconciler"


@dataclass
class Report:
    resent: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


class Reconciler:
    """Safe to run in several coordinators at once: rows are locked and skipped, not shared."""

    def __init__(self, db: Database, dispatcher: Dispatcher) -> None:
        self.db = db
        self.dispatcher = dispatcher
        self.settings = db.settings

    def run_once(self, now: datetime | None = None) -> Report:
        """One round; `now` defaults to the database's clock, the one leases are set by."""
        report = Report()
        self._reap(now, report)
        for task_id, note in self._unsent(now):
            if self.dispatcher.dispatch(task_id, actor=ACTOR, note=note):
                report.resent.append(task_id)
        return report

    def _reap(self, now: datetime | None, report: Report) -> None:
        """Leases that ran out mean the worker died or hung: retry, or fail after max attempts."""
        with self.db.session() as session:
            now = now or db_now(session)
            stale = session.scalars(
                select(Task)
                .where(Task.state.in_([s.value for s in LEASED_STATES]), Task.lease_expires_at < now)
                .with_for_update(skip_locked=True)
            ).all()
            for task in stale:
                owner, attempt = task.lease_owner, task.attempt
                release(task)
                self._close_lost_runs(session, task.id, owner, now)
                if attempt >= self.settings.max_attempts:
                    task.failure_reason = f"worker lost on {attempt} attempts (last: {owner})"
                    transition(session, task, TaskState.FAILED, actor=ACTOR,
                               detail=f"lease of {owner} expired on attempt {attempt} of "
                                      f"{self.settings.max_attempts}; giving up")
                    report.failed.append(task.id)
                else:
                    transition(session, task, TaskState.QUEUED, actor=ACTOR,
                               detail=f"lease of {owner} expired on attempt {attempt}; requeued")
                    task.dispatched_at = None
                    report.requeued.append(task.id)

    @staticmethod
    def _close_lost_runs(session: Session, task_id: int, owner: str | None, now: datetime) -> None:
        """A run whose worker died never recorded its end; say what happened to it."""
        session.execute(
            update(TaskRun)
            .where(TaskRun.task_id == task_id, TaskRun.finished_at.is_(None))
            .values(finished_at=now, outcome="lost", detail=f"worker {owner} stopped renewing its lease")
        )

    def _unsent(self, now: datetime | None) -> list[tuple[int, str]]:
        """Triaged tasks whose send failed, and queued ones whose message may have been lost."""
        with self.db.session() as session:
            now = now or db_now(session)
            grace = now - timedelta(seconds=2 * self.settings.dispatch_timeout_seconds + 1)
            lost = now - timedelta(seconds=self.settings.queued_resend_seconds)
            rows = session.execute(
                select(Task.id, Task.state, Task.dispatched_at).where(
                    or_(
                        (Task.state == TaskState.TRIAGED) & (Task.updated_at < grace),
                        (Task.state == TaskState.QUEUED)
                        & or_(Task.dispatched_at.is_(None), Task.dispatched_at < lost),
                    )
                ).order_by(Task.id)
            ).all()
        result = []
        for task_id, state, dispatched_at in rows:
            if state == TaskState.TRIAGED:
                result.append((task_id, "resent after a failed send"))
            elif dispatched_at is None:
                result.append((task_id, "requeued run"))
            else:
                result.append((task_id, "resent: the message may have been lost"))
        return result

    def loop(self, stop: threading.Event) -> None:
        """Run until `stop` is set; errors are logged and the next round tries again."""
        while not stop.wait(self.settings.reaper_interval_seconds):
            try:
                report = self.run_once()
                if report.resent or report.requeued or report.failed:
                    log.info("reconciler: resent %s, requeued %s, failed %s",
                             report.resent, report.requeued, report.failed)
            except Exception:
                log.exception("reconciler round failed; trying again next round")
