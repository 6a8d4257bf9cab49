"""Intake's fast path keeps the outbox's guarantees: one task, committed before the 2xx, sent once."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from common.celery_app import make_celery
from common.db import Database, db_now
from common.models import Task, WebhookDelivery
from common.settings import Settings
from coordinator.app import create_app
from coordinator.dispatch import Dispatcher
from coordinator.reconciler import Reconciler
from coordinator.services import build_services
from coordinator.webhooks.endpoint import process_delivery
from tests.conftest import settings_env
from tests.support import Process, free_port, headers, labeled_issue, queue_key, wait_for

pytestmark = pytest.mark.integration
CLOSED_BROKER = "redis://127.0.0.1:1/0"  # nothing listens there: every send fails at once


def reconcile_later(settings: Settings, db: Database) -> list[int]:
    """One reconciler round on the real broker, at a moment past every grace period."""
    reconciler = Reconciler(db, Dispatcher(db, make_celery(settings)))
    with db.session() as session:
        when = db_now(session) + timedelta(seconds=settings.queued_resend_seconds + 60)
    return reconciler.run_once(when).resent


def queued_ids(settings: Settings, queue: str = "backend") -> list[str]:
    client = redis.Redis.from_url(settings.broker_url)
    return [json.loads(raw)["headers"]["id"] for raw in client.lrange(queue_key(queue), 0, -1)]


def test_fifty_concurrent_copies_of_a_delivery_make_one_task_and_no_database_error(settings: Settings,
                                                                                    db: Database) -> None:
    services = build_services(settings)
    errors: list[BaseException] = []
    event.listen(services.db.engine, "handle_error", lambda context: errors.append(context.original_exception))
    body = json.dumps(labeled_issue("forgecrew:backend", number=4242)).encode()
    delivery, barrier, statuses = str(uuid.uuid4()), threading.Barrier(50), []

    def deliver() -> None:
        barrier.wait()
        answer = process_delivery(services, {"x-github-event": "issues", "x-github-delivery": delivery}, body)
        statuses.append(answer.status)

    threads = [threading.Thread(target=deliver) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    services.db.dispose()
    assert sorted(statuses) == [200] * 49 + [202]
    assert errors == []  # ON CONFLICT DO NOTHING: PostgreSQL logged no unique violation
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Task)) == 1
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 1


def test_broker_down_every_delivery_is_answered_and_each_task_sent_once_it_returns(make_settings, db: Database
                                                                                    ) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    down = settings.model_copy(update={"broker_url": CLOSED_BROKER})
    with TestClient(create_app(down, run_reconciler=False)) as client:
        for number in range(1, 21):
            body = json.dumps(labeled_issue("forgecrew:backend", number=number)).encode()
            response = client.post("/webhooks/github", content=body, headers=headers("issues", body))
            assert response.status_code == 202, response.text
    with db.session() as session:
        states = session.scalars(select(Task.state)).all()
    assert states == ["triaged"] * 20  # committed, and left for the reconciler
    assert sorted(reconcile_later(settings, db)) == list(range(1, 21))
    assert reconcile_later(settings, db) == []
    ids = queued_ids(settings)
    assert len(ids) == 20 and len(set(ids)) == 20


def test_several_processes_serve_and_one_runs_the_reconciler(make_settings, db: Database, tmp_path: Path,
                                                             processes: list[Process]) -> None:
    settings = make_settings()
    port = free_port()
    proc = Process(["coordinator", "--host", "127.0.0.1", "--port", str(port), "--workers", "3"],
                   settings_env(settings), tmp_path / "coordinator.log")
    processes.append(proc)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: proc.log().count("Application startup complete") == 3, timeout=60, what="3 processes up")
    with httpx.Client(timeout=30) as client:  # fresh connections, spread over the processes by the kernel
        for number in range(1, 31):
            body = json.dumps(labeled_issue("forgecrew:backend", number=number)).encode()
            response = httpx.post(f"{url}/webhooks/github", content=body, headers=headers("issues", body), timeout=30)
            assert response.status_code == 202, response.text
        assert client.get(f"{url}/healthz").status_code == 200
    wait_for(lambda: len(queued_ids(settings)) == 30, timeout=30, what="30 tasks sent")

    def states() -> list[str] | None:  # each send is recorded just after its message is published
        with db.session() as session:
            found = session.scalars(select(Task.state).distinct()).all()
        return list(found) if found == ["queued"] else None

    assert wait_for(states, timeout=10, what="every send recorded") == ["queued"]
    assert proc.log().count("reconciler running in process") == 1
    assert proc.stop() == 0
    assert "Finished server process" in proc.log()
