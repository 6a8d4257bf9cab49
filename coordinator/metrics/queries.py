"""The few aggregate queries a scrape runs: the database is the record, so the figures are exact.

Every figure is a GROUP BY over a table, computed by the database; Python only sees one row per
label set. Counters count append-only facts (finished runs, events into a final state, webhook
deliveries), so they only grow while rows are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, case, func, or_, select
from sqlalchemy.orm import Session

from common.models import Task, TaskEvent, TaskRun, WebhookDelivery
from common.states import TaskState
from coordinator.metrics.classify import delivery_class, run_error, wait_kind

# A task's life, creation to a final state: minutes to days (a PR waits for review before done).
TASK_BUCKETS: tuple[float, ...] = (60, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400, 259200, 604800)
# One agent run: 5 to 60 minutes is the expected range, limits stop it near there.
RUN_BUCKETS: tuple[float, ...] = (30, 60, 120, 300, 600, 900, 1200, 1800, 2700, 3600, 5400, 7200)
# States a task's life ends in (for now: a failed or cancelled task may be retried, a PR merged).
ENDINGS = (TaskState.PR_OPEN, TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED)


@dataclass(frozen=True)
class HistogramRow:
    labels: tuple[str, ...]
    cumulative: tuple[int, ...]  # observations <= each bucket bound, in bucket order
    count: int
    total: float


@dataclass(frozen=True)
class RunRow:
    """Runs of one (specialty, outcome, sandbox, model, error) and the tokens they spent."""

    specialty: str
    outcome: str | None  # None while running
    sandbox: str | None
    model: str | None
    error: str  # "model", "sandbox" or ""
    runs: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float


def seconds_between(session: Session, start: ColumnElement[Any], end: ColumnElement[Any]) -> ColumnElement[float]:
    """end - start in seconds, on PostgreSQL and SQLite alike."""
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return func.extract("epoch", end - start)


def tasks_by_state(session: Session) -> list[tuple[str, str, int]]:
    """(state, specialty, tasks) for every pair that has tasks."""
    rows = session.execute(select(Task.state, Task.specialty, func.count()).group_by(Task.state, Task.specialty))
    return [(state, specialty, count) for state, specialty, count in rows]


def task_durations(session: Session) -> list[HistogramRow]:
    """Creation to each move into a final state, by (specialty, state reached)."""
    duration = seconds_between(session, Task.created_at, TaskEvent.at)
    query = (select(Task.specialty, TaskEvent.to_state, *_histogram_columns(duration, TASK_BUCKETS))
             .select_from(TaskEvent).join(Task, Task.id == TaskEvent.task_id)
             .where(TaskEvent.to_state.in_([state.value for state in ENDINGS]),
                    or_(TaskEvent.from_state.is_(None), TaskEvent.from_state != TaskEvent.to_state))
             .group_by(Task.specialty, TaskEvent.to_state))
    return _histogram(session, query, labels=2)


def run_durations(session: Session) -> list[HistogramRow]:
    """Start to finish of every finished run, by (specialty, outcome)."""
    duration = seconds_between(session, TaskRun.started_at, TaskRun.finished_at)
    query = (select(Task.specialty, TaskRun.outcome, *_histogram_columns(duration, RUN_BUCKETS))
             .select_from(TaskRun).join(Task, Task.id == TaskRun.task_id)
             .where(TaskRun.finished_at.is_not(None), TaskRun.outcome.is_not(None))
             .group_by(Task.specialty, TaskRun.outcome))
    return _histogram(session, query, labels=2)


def runs(session: Session) -> list[RunRow]:
    """Runs and their usage, by (specialty, outcome, sandbox, model, error class)."""
    per_run = (select(Task.specialty.label("specialty"), TaskRun.outcome.label("outcome"),
                      TaskRun.sandbox.label("sandbox"), TaskRun.model.label("model"),
                      run_error(TaskRun.outcome, TaskRun.detail).label("error"),
                      TaskRun.input_tokens, TaskRun.output_tokens, TaskRun.cache_read_tokens,
                      TaskRun.cache_write_tokens, TaskRun.cost_usd)
               .select_from(TaskRun).join(Task, Task.id == TaskRun.task_id).subquery())
    keys = (per_run.c.specialty, per_run.c.outcome, per_run.c.sandbox, per_run.c.model, per_run.c.error)
    sums = [func.coalesce(func.sum(per_run.c[name]), 0) for name in
            ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cost_usd")]
    # grouped outside the subquery: PostgreSQL cannot match a CASE with bound values in GROUP BY
    rows = session.execute(select(*keys, func.count(), *sums).group_by(*keys))
    return [RunRow(specialty, outcome, sandbox, model, error or "", count, int(i), int(o), int(cr), int(cw),
                   float(cost))
            for specialty, outcome, sandbox, model, error, count, i, o, cr, cw, cost in rows]


@dataclass(frozen=True)
class WaitingRow:
    """Waiting tasks of one (queue, reason kind): how many, and since when the oldest waits."""

    queue: str
    kind: str
    count: int
    oldest: datetime | None
    oldest_reason: str | None


def waiting(session: Session) -> list[WaitingRow]:
    """Waiting tasks by (queue, reason kind); the reasons are grouped in the database, classified here."""
    rows = session.execute(select(Task.specialty, Task.wait_reason, func.count(), func.min(Task.waiting_since))
                           .where(Task.state == TaskState.WAITING.value)
                           .group_by(Task.specialty, Task.wait_reason))
    found: dict[tuple[str, str], WaitingRow] = {}
    for queue, reason, count, since in rows:
        since = _aware(since)
        key = (queue, wait_kind(reason))
        row = found.get(key)
        if row is None or (since is not None and (row.oldest is None or since < row.oldest)):
            oldest, oldest_reason = since, reason
        else:
            oldest, oldest_reason = row.oldest, row.oldest_reason
        found[key] = WaitingRow(queue, key[1], count + (row.count if row else 0), oldest, oldest_reason)
    return sorted(found.values(), key=lambda row: (row.queue, row.kind))


def _aware(value: Any) -> datetime | None:
    if isinstance(value, str):  # SQLite gives an aggregate of a typed column back as text
        value = datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def deliveries(session: Session) -> list[tuple[str, str, int]]:
    """(event, outcome class, deliveries) over every webhook delivery recorded."""
    per_delivery = select(WebhookDelivery.event.label("event"),
                          delivery_class(WebhookDelivery.outcome).label("outcome")).subquery()
    keys = (per_delivery.c.event, per_delivery.c.outcome)
    return [(event, outcome, count) for event, outcome, count in
            session.execute(select(*keys, func.count()).group_by(*keys))]


def _histogram_columns(duration: ColumnElement[float], buckets: Sequence[float]) -> list[ColumnElement[Any]]:
    cumulative = [func.sum(case((duration <= bound, 1), else_=0)) for bound in buckets]
    return [*cumulative, func.count(), func.coalesce(func.sum(duration), 0.0)]


def _histogram(session: Session, query: Select[Any], *, labels: int) -> list[HistogramRow]:
    result = []
    for row in session.execute(query):
        values = tuple(row)
        names, counts = values[:labels], values[labels:]
        result.append(HistogramRow(tuple(str(name) for name in names), tuple(int(n or 0) for n in counts[:-2]),
                                   int(counts[-2]), float(counts[-1] or 0.0)))
    return result
