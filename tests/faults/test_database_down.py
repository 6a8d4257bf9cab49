"""Fault 4: the database goes away, under the coordinator's intake and under a worker mid-task."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from common.db import Database
from common.models import Task, WebhookDelivery
from common.settings import Settings
from tests.conftest import settings_env
from tests.fakes.anthropic_server import FakeAnthropic
from tests.faults.services import PrivatePostgres, install_hook, private_postgres, PUSH_LOG_HOOK
from tests.faults.support import (REPO, Forge, deliver, record_fault, serve_per_issue, start_workers, story,
                                  wait_final)
from tests.sample_repo import ISSUE_BODY, ISSUE_TITLE, fixing_script
from tests.support import Process, labeled_issue, start_coordinator, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def pg() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


@pytest.fixture
def pg_db(pg: PrivatePostgres, fault_settings: Callable[..., Settings]) -> Iterator[Database]:
    database = Database(fault_settings(database_url=pg.url))
    yield database
    database.dispose()


def ready(url: str) -> httpx.Response:
    return httpx.get(f"{url}/readyz", timeout=30)


def deliveries(db: Database, delivery: str) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(WebhookDelivery)
                              .where(WebhookDelivery.delivery_id == delivery)) or 0


def test_database_down_the_webhook_answers_503_and_its_redelivery_makes_the_task(
        fault_settings: Callable[..., Settings], pg: PrivatePostgres, pg_db: Database, tmp_path: Path,
        processes: list[Process]) -> None:
    """GitHub records a failed delivery (a 5xx it may redeliver), /readyz names the database, nothing
    is half-written; the same delivery sent again after recovery makes the task, once."""
    coordinator, url = start_coordinator(settings_env(fault_settings(database_url=pg.url)), tmp_path)
    processes.append(coordinator)
    data = labeled_issue("forgecrew:backend", number=7, title=ISSUE_TITLE, body=ISSUE_BODY)
    delivery = "4-database-down-0001"
    pg.stop()
    down = deliver(url, data, delivery=delivery)
    readiness = ready(url)
    assert down.status_code == 503, down.text
    assert "database" in down.json()["error"] and down.headers.get("retry-after")
    assert readiness.status_code == 503
    assert readiness.json()["checks"]["database"].startswith("error: OperationalError"), readiness.json()
    assert readiness.json()["checks"]["broker"] == "ok"
    assert coordinator.alive()

    pg.start()
    restarted = time.monotonic()
    wait_for(lambda: ready(url).status_code == 200, timeout=60, what="/readyz after the database came back")
    assert deliveries(pg_db, delivery) == 0  # the refused delivery left no row behind
    with pg_db.session() as session:
        assert session.scalar(select(func.count()).select_from(Task)) == 0
    again = deliver(url, data, delivery=delivery)  # GitHub's redelivery: the same id
    recovered = time.monotonic() - restarted
    assert again.status_code == 202, again.text
    task_id = again.json()["task_id"]
    wait_for(lambda: story(pg_db, task_id).state == "queued", timeout=30, what="the task sent")
    duplicate = deliver(url, data, delivery=delivery)
    with pg_db.session() as session:
        tasks = session.scalar(select(func.count()).select_from(Task))
    record_fault("4a database down under webhook intake", recovered=recovered, lost=int(tasks == 0),
                 duplicated=max(tasks - 1, 0), refused_with=down.status_code)
    assert duplicate.status_code == 200 and duplicate.json()["status"] == "duplicate"
    assert tasks == 1 and deliveries(pg_db, delivery) == 1
    assert [to for to, _, _ in story(pg_db, task_id).events] == ["pending", "triaged", "queued"]


class Gate:
    """Holds the model's first reply of the first attempt until the test opens it."""

    def __init__(self) -> None:
        self.reached, self.opened = threading.Event(), threading.Event()

    def first_turn(self, body: dict[str, Any]) -> Any:
        if not self.reached.is_set():
            self.reached.set()
            assert self.opened.wait(90), "the test never opened the gate"
        return fixing_script()[0]


def pushes(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_database_down_mid_task_the_worker_stops_before_pushing_and_the_task_resumes(
        fault_settings: Callable[..., Settings], pg: PrivatePostgres, pg_db: Database, model: FakeAnthropic,
        forge: Forge, tmp_path: Path, processes: list[Process]) -> None:
    """The database goes away while the agent works, for longer than the lease. The worker cannot
    renew, gives the task up and pushes nothing; after recovery the task runs again and opens one PR."""
    gate, push_log = Gate(), tmp_path / "pushes.log"
    install_hook(forge.git_root / f"{REPO}.git", "post-receive", PUSH_LOG_HOOK.format(log=push_log))
    serve_per_issue(model, {ISSUE_TITLE: [gate.first_turn, *fixing_script()[1:]]})
    forge.add_issue(1, ISSUE_TITLE, ISSUE_BODY)
    settings = fault_settings(database_url=pg.url)
    env = settings_env(settings)
    coordinator, url = start_coordinator(env, tmp_path)
    processes.append(coordinator)
    [worker] = start_workers(env, tmp_path, "backend", 1, processes)
    response = deliver(url, labeled_issue("forgecrew:backend", number=1, title=ISSUE_TITLE, body=ISSUE_BODY))
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    assert gate.reached.wait(90), worker.log()[-3000:]
    pg.stop()
    wait_for(lambda: "could not renew its lease" in worker.log(), timeout=30, what="the worker to give the lease up")
    gate.opened.set()  # attempt 1's agent goes on, and must stop at its next step, the database still down
    wait_for(lambda: "raised unexpected" in worker.log() or " succeeded in " in worker.log(), timeout=60,
             what="attempt 1 to end")
    pg.start()
    restarted = time.monotonic()
    end = wait_final(pg_db, task_id)
    recovered = time.monotonic() - restarted
    pulls, branch_pushes = forge.pulls(), [line for line in pushes(push_log) if "refs/heads/forgecrew/" in line]
    record_fault("4b database down mid-task under a worker", recovered=recovered, lost=int(end.state != "pr_open"),
                 duplicated=max(len(pulls) - 1, 0) + max(len(branch_pushes) - 1, 0), attempts=end.attempt)
    assert end.state == "pr_open", (end.failure_reason, end.details())
    assert end.attempt == 2 and [outcome for _, outcome in end.runs] in (["lost", "pr_open"], ["lease_lost", "pr_open"])
    assert "expired on attempt 1; requeued" in end.details()
    assert len(branch_pushes) == 1 and len(pulls) == 1 and forge.pr_creations() == 1  # attempt 1 pushed nothing
    assert worker.alive()
