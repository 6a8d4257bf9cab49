"""Limits and priorities through real processes: a coordinator and Celery workers on PostgreSQL and Redis
(or RabbitMQ), the local forge and a scripted model whose first reply waits behind a gate.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from common.celery_app import make_celery
from common.db import Database
from common.forge.local import LocalForge
from common.models import Task, TaskEvent
from common.settings import Settings
from coordinator.dispatch import Dispatcher
from coordinator.intake import NewTask, insert_task
from coordinator.triage import TriageDecision
from tests.conftest import settings_env
from tests.fakes.anthropic_server import DEFAULT_KEY, FakeAnthropic, Gate
from tests.sample_repo import ISSUE_BODY, ISSUE_TITLE, fixing_script, write_sample
from tests.support import Process, deliver, labeled_issue, start_coordinator, start_worker, wait_for

pytestmark = pytest.mark.integration
REPO = "acme/calc"
IN_FLIGHT = ("running", "testing")
API_TOKEN = "scheduling-test-api-token-0123456789"



class RunningSampler:
    """Counts, every few milliseconds, the tasks a worker runs; the most seen at once."""

    def __init__(self, db: Database) -> None:
        self.db, self.most, self._stop = db, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> RunningSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            with self.db.session() as session:
                now = session.scalar(select(func.count()).select_from(Task).where(Task.state.in_(IN_FLIGHT)))
            self.most = max(self.most, int(now or 0))


@pytest.fixture
def model() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


def scripted(model: FakeAnthropic, runs: int) -> Gate:
    """`runs` runs that each fix calc.py; the first one's first reply waits behind the returned gate."""
    first, *rest = fixing_script()
    gate = Gate(first)
    model.add(gate, *rest)
    for _ in range(runs - 1):
        model.add(*fixing_script())
    return gate


def forge_with_issues(settings: Settings, tmp_path: Path, numbers: range) -> LocalForge:
    forge = LocalForge(settings)
    forge.create_repo(REPO, write_sample(tmp_path / "sample"))
    for number in numbers:
        forge.create_issue(REPO, number, f"{ISSUE_TITLE} ({number})", ISSUE_BODY)
    return forge


def issue_event(number: int, *extra_labels: str) -> dict[str, Any]:
    data = labeled_issue("forgecrew:backend", repo=REPO, number=number, title=f"{ISSUE_TITLE} ({number})",
                         body=ISSUE_BODY)
    data["issue"]["labels"] += [{**data["label"], "name": name} for name in extra_labels]
    return data


def tasks(db: Database) -> dict[int, Task]:
    with db.session() as session:
        return {task.issue_number or task.id: task for task in session.scalars(select(Task))}


def run_starts(db: Database) -> list[tuple[datetime, int]]:
    """(when, task id) of every first move into running, in order."""
    with db.session() as session:
        rows = session.execute(select(func.min(TaskEvent.at), TaskEvent.task_id)
                               .where(TaskEvent.to_state == "running").group_by(TaskEvent.task_id))
        return sorted((at, task_id) for at, task_id in rows)


def most_at_once_by_events(db: Database) -> int:
    """The most tasks ever in running/testing together, replayed from the audit log."""
    with db.session() as session:
        events = session.execute(select(TaskEvent.at, TaskEvent.id, TaskEvent.task_id, TaskEvent.to_state)
                                 .order_by(TaskEvent.at, TaskEvent.id)).all()
    inside: set[int] = set()
    most = 0
    for _, _, task_id, state in events:
        (inside.add if state in IN_FLIGHT else inside.discard)(task_id)
        most = max(most, len(inside))
    return most


def test_a_repository_limit_of_one_runs_one_at_a_time_and_a_high_priority_issue_goes_next(
        make_settings: Callable[..., Settings], db: Database, model: FakeAnthropic, tmp_path: Path,
        processes: list[Process]) -> None:
    """Four issues labelled at once, the last one high priority, with FORGECREW_MAX_RUNNING_PER_REPO=1 and a
    worker that could run four: one runs, three wait visibly, and the high one overtakes the two before it."""
    settings = make_settings(forge="local", anthropic_api_key=DEFAULT_KEY, anthropic_base_url=model.base_url,
                             max_running_per_repo=1, worker_concurrency=4, api_token=API_TOKEN,
                             # no sweep within the test: each release is the finishing worker's own
                             reaper_interval_seconds=120, lease_seconds=6)
    forge = forge_with_issues(settings, tmp_path, range(1, 5))
    gate = scripted(model, runs=4)
    env = settings_env(settings)
    coordinator, url = start_coordinator(env, tmp_path)
    processes.append(coordinator)
    processes.append(start_worker(env, tmp_path, "backend"))

    with RunningSampler(db) as sampler:
        deliver(url, "issues", issue_event(1))
        assert gate.reached.wait(60), processes[-1].log()[-3000:]
        for number in (2, 3):
            deliver(url, "issues", issue_event(number))
        deliver(url, "issues", issue_event(4, "forgecrew:priority-high"))
        wait_for(lambda: (found := tasks(db)) and all(found[n].state == "waiting" for n in (2, 3, 4)),
                 what="three tasks waiting")
        now = tasks(db)
        assert now[1].state in IN_FLIGHT, {n: t.state for n, t in now.items()}
        assert now[4].priority == 1 and now[2].priority == 0
        assert now[2].wait_reason == ("repository acme/calc has 1 of 1 tasks running "
                                      "(FORGECREW_MAX_RUNNING_PER_REPO)")
        status = subprocess.run([sys.executable, "-m", "coordinator.cli", "status", "--json"], env=env,
                                capture_output=True, text=True, timeout=60)
        waiting = json.loads(status.stdout)["waiting"]
        assert waiting["total"] == 3 and waiting["by_reason"]["limit"]["count"] == 3, waiting
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'forgecrew_waiting_tasks{queue="backend",reason="limit"} 3.0' in metrics
        detail = httpx.get(f"{url}/api/v1/tasks/{now[3].id}", headers={"Authorization": f"Bearer {API_TOKEN}"},
                           timeout=10)
        assert detail.status_code == 200 and detail.json()["wait_reason"] == now[3].wait_reason, detail.text

        gate.opened.set()
        done = wait_for(lambda: (found := tasks(db)) and all(t.state == "pr_open" for t in found.values())
                        and found, timeout=120, interval=0.3, what="four PRs")
    assert sampler.most == 1
    assert most_at_once_by_events(db) == 1
    assert len(forge.pull_requests(REPO)) == 4
    order = [task_id for _, task_id in run_starts(db)]
    ids = {number: task.id for number, task in done.items()}
    assert order == [ids[1], ids[4], ids[2], ids[3]], (order, ids)  # high first, then by age


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_a_high_priority_message_overtakes_queued_normal_ones_on_the_broker(
        broker: str, make_settings: Callable[..., Settings], db: Database, model: FakeAnthropic, tmp_path: Path,
        processes: list[Process], request: pytest.FixtureRequest) -> None:
    """No limit: one worker slot (concurrency 1, prefetch 1) is busy, three normal tasks are queued on the
    broker and then a high one; the broker hands the high one over next."""
    extra: dict[str, Any] = {}
    if broker == "rabbitmq":
        extra = {"broker_url": request.getfixturevalue("amqp_url"), "rabbitmq_priority_queues": True}
    settings = make_settings(forge="local", anthropic_api_key=DEFAULT_KEY, anthropic_base_url=model.base_url,
                             worker_concurrency=1, reaper_interval_seconds=1, lease_seconds=6, **extra)
    forge_with_issues(settings, tmp_path, range(1, 6))
    gate = scripted(model, runs=2)
    processes.append(start_worker(settings_env(settings), tmp_path, "backend"))
    local = Database(settings)
    dispatcher = Dispatcher(local, make_celery(settings))
    try:
        def submit(number: int, priority: int = 0) -> int:
            with local.session() as session:
                task_id = insert_task(session, NewTask(REPO, number, f"{ISSUE_TITLE} ({number})", ISSUE_BODY,
                                                       requested_by="test", priority=priority),
                                      TriageDecision("backend", "test"), actor="test")
            assert dispatcher.dispatch(task_id)
            return task_id

        busy = submit(1)
        assert gate.reached.wait(60), processes[-1].log()[-3000:]
        normal = [submit(number) for number in (2, 3, 4)]
        high = submit(5, priority=1)
        gate.opened.set()
        wait_for(lambda: len(run_starts(db)) >= 2, timeout=60, what="the next run to start")
        order = [task_id for _, task_id in run_starts(db)]
        assert order[:2] == [busy, high], (order, normal)
    finally:
        dispatcher.celery.close()
        local.dispose()
