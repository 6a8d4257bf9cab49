"""End to end: a real coordinator process, real worker processes, PostgreSQL and Redis."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from common.db import Database
from common.models import Task, WebhookDelivery
from common.settings import Settings
from tests.conftest import settings_env
from tests.support import (Process, RedisServer, children_of, headers, labeled_issue, start_coordinator, start_worker,
                           wait_for)

pytestmark = pytest.mark.integration
# Workers refuse to start without a forge and a model; these tests only need the task to start.
WORKER_SETTINGS = {"forge": "local", "anthropic_api_key": "sk-ant-test-not-used"}


def task_state(db: Database, task_id: int) -> str:
    with db.session() as session:
        return session.get(Task, task_id).state


def reached(db: Database, task_id: int, state: str) -> bool:
    """Whether the task ever entered `state`: the worker may have moved on before the next poll."""
    with db.session() as session:
        return any(event.to_state == state for event in session.get(Task, task_id).events)


def post(url: str, event: str, data: dict, delivery: str | None = None) -> httpx.Response:
    body = json.dumps(data).encode()
    return httpx.post(f"{url}/webhooks/github", content=body, headers=headers(event, body, delivery=delivery),
                      timeout=30)


def test_labeled_issue_reaches_a_backend_worker(make_settings, db: Database, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                processes: list[Process]) -> None:
    env = settings_env(make_settings(**WORKER_SETTINGS))
    coordinator, url = start_coordinator(env, tmp_path)
    processes.append(coordinator)
    processes.append(start_worker(env, tmp_path, "backend"))
    response = post(url, "issues", labeled_issue("forgecrew:backend"))
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    wait_for(lambda: reached(db, task_id, "running"), timeout=60, what="task running")
    with db.session() as session:
        task = session.get(Task, task_id)
        trail = [(e.from_state, e.to_state) for e in task.events]
        claimed_by = next(e.actor for e in task.events if e.to_state == "running")
    assert trail[:4] == [(None, "pending"), ("pending", "triaged"), ("triaged", "queued"), ("queued", "running")]
    assert claimed_by.startswith("backend-")


def test_concurrent_duplicate_deliveries_make_one_task(settings: Settings, db: Database, tmp_path: Path,
                                                       processes: list[Process]) -> None:
    coordinator, url = start_coordinator(settings_env(settings), tmp_path)
    processes.append(coordinator)
    data = labeled_issue("forgecrew:frontend", number=42)
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def send() -> None:
        barrier.wait()
        statuses.append(post(url, "issues", data, delivery="dup-delivery").status_code)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(200 <= status < 300 for status in statuses), statuses
    assert statuses.count(202) == 1
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Task)) == 1
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 1


def test_distinct_deliveries_for_one_issue_make_one_active_task(settings: Settings, db: Database,
                                                               tmp_path: Path, processes: list[Process]) -> None:
    coordinator, url = start_coordinator(settings_env(settings), tmp_path)
    processes.append(coordinator)
    data = labeled_issue("forgecrew", number=43)
    statuses: list[int] = []
    barrier = threading.Barrier(6)

    def send(i: int) -> None:
        barrier.wait()
        statuses.append(post(url, "issues", data, delivery=f"distinct-{i}").status_code)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count(202) == 1 and statuses.count(200) == 5, statuses
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Task)) == 1
        outcomes = session.scalars(select(WebhookDelivery.outcome)).all()
    assert sum("already active" in outcome for outcome in outcomes) == 5


def test_broker_down_then_up_loses_nothing(make_settings, db: Database, tmp_path: Path,  # type: ignore[no-untyped-def]
                                           processes: list[Process]) -> None:
    broker = RedisServer(tmp_path)
    settings = make_settings(broker_url=broker.url, reaper_interval_seconds=1, **WORKER_SETTINGS)
    env = settings_env(settings)
    coordinator, url = start_coordinator(env, tmp_path)  # the broker is not running yet
    processes.append(coordinator)
    response = post(url, "issues", labeled_issue("forgecrew:backend", number=7))
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    wait_for(lambda: "broker unreachable" in coordinator.log(), timeout=30, what="failed send logged")
    assert task_state(db, task_id) == "triaged"
    broker.start()
    try:
        processes.append(start_worker(env, tmp_path, "backend"))
        wait_for(lambda: reached(db, task_id, "running"), timeout=60, what="task running after broker up")
        with db.session() as session:
            details = [(e.to_state, e.actor, e.detail) for e in session.get(Task, task_id).events]
        assert ("queued", "reconciler", "sent to queue backend (resent after a failed send)") in details
    finally:
        for proc in processes:
            proc.stop()
        broker.stop()


def descendants_of(pid: int) -> list[int]:
    found = children_of(pid)
    for child in list(found):
        found.extend(descendants_of(child))
    return found


def running(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


def test_up_runs_everything_and_stops_everything_it_started(make_settings, db: Database, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                            redis_db: int) -> None:
    """Even a worker stuck in a model call is stopped, pool processes included, after --grace."""
    import dataclasses

    from common.forge.local import LocalForge
    from tests.fakes.anthropic_server import DEFAULT_KEY, FakeAnthropic, tool_use
    from tests.sample_repo import write_sample
    from tests.support import free_port

    with FakeAnthropic() as model:
        model.add(dataclasses.replace(tool_use("list_files", {"path": "."}), delay=120))
        # the operator's own PostgreSQL and Redis (make_settings'), not the zero-setup default
        settings = make_settings(forge="local", anthropic_api_key=DEFAULT_KEY, anthropic_base_url=model.base_url)
        LocalForge(settings).create_repo("Codertocat/Hello-World", write_sample(tmp_path / "sample"))
        LocalForge(settings).create_issue("Codertocat/Hello-World", 9, "Fix it", "")
        port = free_port()
        up = Process(["up", "--port", str(port), "--concurrency", "1", "--grace", "3"], settings_env(settings),
                     tmp_path / "up.log")
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: httpx.get(f"{url}/readyz", timeout=1).status_code == 200, timeout=60, what="up ready")
            wait_for(lambda: " ready." in up.log(), timeout=60, what="worker ready")
            response = post(url, "issues", labeled_issue("forgecrew:devops", number=9))
            assert response.status_code == 202
            wait_for(lambda: len(model.message_requests) == 1, timeout=60, what="the agent's first model call")
            children = children_of(up.popen.pid)
            assert len(children) >= 4, "coordinator, reconciler, Flower and a worker per specialty"
            everything = descendants_of(up.popen.pid)
            assert len(everything) > 2, "the worker's pool process is a grandchild"
        finally:
            assert up.stop() == 0, up.log()
    for pid in everything:
        assert not running(pid), (pid, up.log()[-3000:])
