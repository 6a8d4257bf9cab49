"""Periodic repair: resend tasks whose send failed or was lost, requeue runs whose worker died."""

from __future__ import annotations

from collections.abc import Callable

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, Select, or_, select, update

from common import canvas
from common.celery_app import message_id, task_label
from common.db import Database, db_now
from common.leases import close_lost_runs, release
from common.models import Task
from common.states import LEASED_STATES, TaskState
from common.transitions import transition
from coordinator import admission, limits
from coordinator.broker_messages import held_message_ids
from coordinator.dispatch import BROKER_ERRORS, Dispatcher

log = logging.getLogger(__name__)
ACTOR = "reconciler"
# Sends reserved per transaction: short locks, and a down broker stops the round early.
RESEND_BATCH = 50
# Finished tasks' workspaces are looked for at most this often: a walk of the directory is not free.
WORKSPACE_GC_SECONDS = 3600.0
# A task in these states needs its workspace no more; pr_open keeps it, a follow-up may come.
FINISHED_STATES = (TaskState.DONE, TaskState.CANCELLED, TaskState.FAILED)


@dataclass
class Report:
    resent: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    workspaces_removed: list[str] = field(default_factory=list)
    broker_error: str | None = None  # why the round stopped sending early, if it did


class Reconciler:
    """Safe to run in several coordinators at once: sends are reserved under a row lock that others skip."""

    def __init__(self, db: Database, dispatcher: Dispatcher) -> None:
        self.db = db
        self.dispatcher = dispatcher
        self.settings = db.settings
        self.next_workspace_gc = 0.0  # time.monotonic() of the next workspace collection
        # more repairs of the same kind, run each round (the comment commands a dead coordinator left)
        self.sweeps: list[Callable[[], object]] = []

    def run_once(self, now: datetime | None = None) -> Report:
        """One round; `now` defaults to the database's clock, the one leases are set by."""
        report = Report()
        self._reap(now, report)
        self._resend(now, report)
        self._collect_workspaces(report)
        return report

    def _collect_workspaces(self, report: Report) -> None:
        """Remove this host's workspaces of finished tasks past WORKSPACE_RETENTION_DAYS, at most hourly.

        Only done, cancelled and failed tasks lose theirs (`forgecrew workspaces gc` run by hand also
        takes pr_open ones); a directory a run holds is never removed (WorkspaceManager.gc).
        """
        if time.monotonic() < self.next_workspace_gc:
            return
        self.next_workspace_gc = time.monotonic() + WORKSPACE_GC_SECONDS
        from workers.workspace import WorkspaceManager

        with self.db.session() as session:
            keep = set(session.scalars(select(Task.id).where(Task.state.not_in([s.value for s in FINISHED_STATES]))))
        retention = timedelta(days=self.settings.workspace_retention_days)
        removed = WorkspaceManager(self.settings.workspace_root).gc(retention, keep)
        report.workspaces_removed.extend(str(path) for path in removed)

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
                close_lost_runs(session, task.id, owner, now)
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

    def _resend(self, now: datetime | None, report: Report) -> None:
        """Send tasks whose send failed, requeued runs, and queued tasks whose message was lost."""
        with self.db.session() as session:
            now = now or db_now(session)
            columns = (Task.id, Task.state, Task.specialty, Task.dispatched_at, Task.dispatch_count, Task.repo,
                       Task.issue_number, Task.priority)
            seen = {row.id: row for row in session.execute(self._unsent(now, *columns))}
        try:
            chosen, held = self._choose(seen.values())
        except BROKER_ERRORS as exc:
            log.warning("cannot look into the broker (%s: %s); resending next round", type(exc).__name__, exc)
            report.broker_error = f"cannot look into the broker ({type(exc).__name__}: {exc})"
            return
        self._confirm_held(held, seen)
        for start in range(0, len(chosen), RESEND_BATCH):
            batch = dict(chosen[start:start + RESEND_BATCH])
            if not self._send_batch(now, batch, seen, report):
                report.broker_error = "the broker refused a send (see the warning logged)"
                return

    def _unsent(self, now: datetime, *columns: Any) -> Select[Any]:
        """Rows that may need a send; the same test is repeated under the row lock."""
        grace = now - timedelta(seconds=2 * self.settings.dispatch_timeout_seconds + 1)
        old = now - timedelta(seconds=self.settings.queued_resend_seconds)
        return select(*columns).where(
            or_(
                (Task.state == TaskState.TRIAGED) & (Task.updated_at < grace),
                (Task.state == TaskState.QUEUED) & or_(Task.dispatched_at.is_(None), Task.dispatched_at < old),
            )
        ).order_by(Task.id)

    def _choose(self, rows: Iterable[Row[Any]]) -> tuple[list[tuple[int, str]], list[int]]:
        """Rows to send and why, and old queued rows whose message the broker still holds."""
        rows = list(rows)
        old = [row for row in rows if row.state == TaskState.QUEUED and row.dispatched_at is not None]
        in_broker = held_message_ids(self.dispatcher.celery, {row.specialty for row in old}) if old else set()
        chosen, held = [], []
        for row in rows:
            if row.state == TaskState.TRIAGED:
                chosen.append((row.id, "resent after a failed send"))
            elif row.dispatched_at is None:
                chosen.append((row.id, "requeued run"))
            elif in_broker is None:  # AMQP: no way to look without consuming, so age decides
                chosen.append((row.id, f"resent: queued for over {self.settings.queued_resend_seconds:g}s"))
            elif message_id(row.id, row.dispatch_count) not in in_broker:
                chosen.append((row.id, "resent: its message is no longer in the broker"))
            else:
                held.append(row.id)
        return chosen, held

    def _confirm_held(self, held: list[int], seen: dict[int, Row[Any]]) -> None:
        """A message found waiting is looked for again only after another QUEUED_RESEND_SECONDS."""
        if not held:
            return
        with self.db.session() as session:
            for task_id in held:
                session.execute(update(Task).where(Task.id == task_id,
                                                   Task.dispatch_count == seen[task_id].dispatch_count)
                                .values(dispatched_at=db_now(session)))

    def _send_batch(self, now: datetime, batch: dict[int, str], seen: dict[int, Row[Any]], report: Report) -> bool:
        """Reserve the batch's sends under a short row lock, then send with no lock held.

        Another coordinator skips the locked rows and then sees them freshly dispatched. A send
        that fails gives its reservation back; False tells the caller the broker is down.
        """
        reserved = self._reserve(now, batch, seen)
        with self.db.session() as session:  # workflows: the chain is rebuilt from the step that runs now
            links = canvas.remaining_by_task(session, [task_id for task_id, _, _ in reserved])
        for index, (task_id, number, previous) in enumerate(reserved):
            row = seen[task_id]
            if not self.dispatcher.send(task_id, row.specialty, number, priority=row.priority,
                                        label=task_label(row.repo, row.issue_number, row.specialty, task_id),
                                        links=links.get(task_id, ())):
                self._give_back(reserved[index:])
                return False
            self.dispatcher.record_sent(task_id, number, actor=ACTOR, note=batch[task_id])
            report.resent.append(task_id)
        return True

    def _reserve(self, now: datetime, batch: dict[int, str],
                 seen: dict[int, Row[Any]]) -> list[tuple[int, int, datetime | None]]:
        with self.db.session() as session:
            tasks = session.scalars(
                self._unsent(now, Task).where(Task.id.in_(batch)).with_for_update(skip_locked=True)
            ).all()
            reserved = []
            gate = admission.gated(self.settings)  # a limit is on: a triaged task is admitted first
            if gate:
                limits.lock(session, [task for task in tasks if task.state == TaskState.TRIAGED], self.settings)
            for task in tasks:
                if task.dispatch_count != seen[task.id].dispatch_count:
                    continue  # sent by someone else since we looked
                if gate and task.state == TaskState.TRIAGED and not admission.admit(session, task, self.settings,
                                                                                    actor=ACTOR):
                    continue  # waiting now; a requeued run (queued) already holds its slot
                reserved.append((task.id, task.dispatch_count + 1, task.dispatched_at))
                task.dispatch_count += 1
                task.dispatched_at = task.updated_at = db_now(session)  # one clock for the grace test
        return reserved

    def _give_back(self, unsent: list[tuple[int, int, datetime | None]]) -> None:
        """Unsent reservations: due again next round (the message ids they used stay unused)."""
        with self.db.session() as session:
            for task_id, number, previous in unsent:
                session.execute(update(Task).where(Task.id == task_id, Task.dispatch_count == number)
                                .values(dispatched_at=previous))

    def loop(self, stop: threading.Event) -> None:
        """Run until `stop` is set; errors are logged and the next round tries again."""
        while not stop.wait(self.settings.reaper_interval_seconds):
            try:
                report = self.run_once()
                if report.resent or report.requeued or report.failed:
                    log.info("reconciler: resent %s, requeued %s, failed %s",
                             report.resent, report.requeued, report.failed)
                if report.workspaces_removed:
                    log.info("reconciler: removed %d finished workspace(s)", len(report.workspaces_removed))
            except Exception:
                log.exception("reconciler round failed; trying again next round")
            for sweep in self.sweeps:  # each on its own: one that fails must not starve the ones after it
                try:
                    sweep()
                except Exception:
                    log.exception("reconciler sweep %s failed; trying again next round",
                                  getattr(sweep, "__qualname__", sweep))
