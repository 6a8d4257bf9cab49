"""A prometheus_client Collector that reads the record at scrape time.

Workers run in other processes and hosts, under Celery's prefork pool, and restart; counters
kept in their memory would be split per process and reset with them. So nothing is counted in
memory: every scrape asks the database (the record every worker writes) a few aggregate queries,
the broker for its queue lengths, and the coordinator's worker-event registry who is online.
The figures are exact by construction, on every coordinator, across any restart.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator

from celery import Celery
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import DBAPIError

from common.db import Database
from common.specialties import queue_names
from common.states import TaskState
from coordinator.agents import WorkerWatcher
from coordinator.dispatch import BROKER_ERRORS
from coordinator.metrics import queries
from coordinator.metrics.broker import queue_depths
from coordinator.metrics.classify import WAIT_KIND_NAMES

log = logging.getLogger(__name__)
PREFIX = "forgecrew_"
USAGE_KINDS = ("input", "output", "cache_read", "cache_write")


class ForgecrewCollector(Collector):
    def __init__(self, db: Database, celery: Celery, watcher: WorkerWatcher) -> None:
        self.db = db
        self.celery = celery
        self.watcher = watcher
        self.settings = db.settings

    def collect(self) -> Iterator[Metric]:
        yield from self._database()
        yield from self._broker()
        online = GaugeMetricFamily(PREFIX + "workers_online", "Celery workers heartbeating now.")
        online.add_metric([], len(self.watcher.online()))
        yield online

    def _database(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(PREFIX + "database_up", "1 when this scrape could read the state database.")
        try:
            with self.db.session() as session:
                families = [self._tasks(queries.tasks_by_state(session)),
                            _histogram("task_duration_seconds", "Seconds from a task's creation to each move "
                                       "into a final state (pr_open, done, failed, cancelled).",
                                       ["specialty", "state"], queries.TASK_BUCKETS, queries.task_durations(session)),
                            _histogram("run_duration_seconds", "Seconds each finished agent run took.",
                                       ["specialty", "outcome"], queries.RUN_BUCKETS, queries.run_durations(session)),
                            *_runs(queries.runs(session)),
                            self._waiting(queries.waiting(session)),
                            _deliveries(queries.deliveries(session))]
        except DBAPIError as exc:
            log.warning("metrics: database unreadable (%s)", str(exc).splitlines()[0])
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _tasks(self, rows: list[tuple[str, str, int]]) -> Metric:
        family = GaugeMetricFamily(PREFIX + "tasks", "Tasks now in each state, by specialty.",
                                   labels=["state", "specialty"])
        counts = {(state, specialty): count for state, specialty, count in rows}
        # every known pair appears, zero included, so alerts see 0 rather than no series
        for state in TaskState:
            for specialty in queue_names(self.settings):
                counts.setdefault((state.value, specialty), 0)
        for (state, specialty), count in sorted(counts.items()):
            family.add_metric([state, specialty], count)
        return family

    def _waiting(self, rows: list[queries.WaitingRow]) -> Metric:
        family = GaugeMetricFamily(PREFIX + "waiting_tasks", "Tasks held in waiting, by queue and what they "
                                   "wait for (limit, quota, dependency, overlap, other).", labels=["queue", "reason"])
        counts = {(row.queue, row.kind): row.count for row in rows}
        for queue in queue_names(self.settings):  # zeros too, so an alert sees 0 rather than no series
            for kind in WAIT_KIND_NAMES:
                counts.setdefault((queue, kind), 0)
        for (queue, kind), count in sorted(counts.items()):
            family.add_metric([queue, kind], count)
        return family

    def _broker(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(PREFIX + "broker_up", "1 when this scrape could read the broker's queues.")
        depth = GaugeMetricFamily(PREFIX + "queue_depth", "Messages waiting on each specialty queue "
                                  "(not those a worker holds).", labels=["queue"])
        try:
            depths = queue_depths(self.celery, queue_names(self.settings),
                                  timeout=self.settings.dispatch_timeout_seconds)
        except BROKER_ERRORS as exc:
            log.warning("metrics: broker unreadable (%s: %s)", type(exc).__name__, exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for queue, count in sorted(depths.items()):
            depth.add_metric([queue], count)
        yield up
        yield depth


def _histogram(name: str, documentation: str, labels: list[str], buckets: tuple[float, ...],
               rows: list[queries.HistogramRow]) -> Metric:
    family = HistogramMetricFamily(PREFIX + name, documentation, labels=labels)
    for row in rows:
        bounds = [(_bound(bound), count) for bound, count in zip(buckets, row.cumulative, strict=True)]
        family.add_metric(list(row.labels), [*bounds, ("+Inf", row.count)], sum_value=row.total)
    return family


def _bound(value: float) -> str:
    return str(float(value))


def _runs(rows: list[queries.RunRow]) -> list[Metric]:
    runs = CounterMetricFamily(PREFIX + "runs", "Finished agent runs, by outcome and what sandboxed them.",
                               labels=["specialty", "outcome", "sandbox"])
    tokens = CounterMetricFamily(PREFIX + "tokens", "Model tokens spent, by kind.",
                                 labels=["specialty", "model", "kind"])
    cost = CounterMetricFamily(PREFIX + "cost_usd", "Model spend in US dollars (priced models only).",
                               labels=["specialty", "model"])
    model_errors = CounterMetricFamily(PREFIX + "model_errors", "Runs failed by a model error (the API gave up).",
                                       labels=["specialty", "model"])
    sandbox_errors = CounterMetricFamily(PREFIX + "sandbox_errors", "Runs failed because the sandbox could not "
                                         "run their commands.", labels=["specialty"])
    sums: dict[str, defaultdict[tuple[str, ...], float]] = {name: defaultdict(float) for name in
                                                             ("runs", "tokens", "cost", "model", "sandbox")}
    for row in rows:
        model = row.model or "none"
        if row.outcome is not None:
            sums["runs"][(row.specialty, row.outcome, row.sandbox or "unset")] += row.runs
        spent = (row.input_tokens, row.output_tokens, row.cache_read_tokens, row.cache_write_tokens)
        if row.model is not None or any(spent):  # runs that never reached the model spent nothing
            for kind, count in zip(USAGE_KINDS, spent, strict=True):
                sums["tokens"][(row.specialty, model, kind)] += count
            sums["cost"][(row.specialty, model)] += row.cost_usd
        if row.error == "model":
            sums["model"][(row.specialty, model)] += row.runs
        elif row.error == "sandbox":
            sums["sandbox"][(row.specialty,)] += row.runs
    for family, name in ((runs, "runs"), (tokens, "tokens"), (cost, "cost"), (model_errors, "model"),
                         (sandbox_errors, "sandbox")):
        for labels, value in sorted(sums[name].items()):
            family.add_metric(list(labels), value)
    return [runs, tokens, cost, model_errors, sandbox_errors]


def _deliveries(rows: list[tuple[str, str, int]]) -> Metric:
    family = CounterMetricFamily(PREFIX + "webhook_deliveries", "GitHub webhook deliveries recorded, by event "
                                 "and outcome class.", labels=["event", "outcome"])
    for event, outcome, count in sorted(rows):
        family.add_metric([event, outcome], count)
    return family
