"""Priorities and the sending paths under a limit, in process on PostgreSQL and Redis: the priority labels,
the message each send carries, the reconciler's resend and an operator's cancel under a limit."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from common.celery_app import broker_priority, make_celery
from common.db import Database, db_now
from common.models import Task
from common.settings import Settings
from common.specialties import label_priority
from coordinator.app import create_app
from coordinator.dispatch import Dispatcher
from coordinator.intake import NewTask, insert_task
from coordinator.operations import Operations
from coordinator.reconciler import Reconciler
from coordinator.triage import RuleTriage, TriageDecision, route_label_specialty
from tests.support import headers, labeled_issue, queue_key

pytestmark = pytest.mark.integration


def test_priority_labels_are_no_specialty_and_high_wins() -> None:
    assert route_label_specialty("forgecrew:priority-high") is None
    assert route_label_specialty("forgecrew:priority-low") is None
    assert RuleTriage({})(title="", body="", labels=["forgecrew:priority-high"]).specialty == "general"
    assert label_priority(["forgecrew:backend"]) == 0
    assert label_priority(["forgecrew:priority-low", "forgecrew:priority-high"]) == 1
    assert label_priority(["forgecrew:priority-low"]) == -1


def test_broker_priorities_order_high_before_normal_before_low(make_settings: Callable[..., Settings]) -> None:
    redis_settings = make_settings()
    amqp_settings = make_settings(broker_url="amqp://guest:guest@127.0.0.1:5672//")
    # kombu's Redis reads step 0 first; RabbitMQ delivers the higher number first
    assert [broker_priority(redis_settings, p) for p in (1, 0, -1)] == [0, 5, 9]
    assert [broker_priority(amqp_settings, p) for p in (1, 0, -1)] == [2, 1, 0]
    assert make_celery(amqp_settings).conf.task_queues[0].queue_arguments.get("x-max-priority") is None
    opted = make_settings(broker_url="amqp://guest:guest@127.0.0.1:5672//", rabbitmq_priority_queues=True)
    assert make_celery(opted).conf.task_queues[0].queue_arguments["x-max-priority"] == 2


def new_task(db: Database, number: int, *, priority: int = 0) -> int:
    with db.session() as session:
        return insert_task(session, NewTask("acme/calc", number, f"issue {number}", "", requested_by="alice",
                                            priority=priority), TriageDecision("backend", "test"), actor="test")


def messages(settings: Settings, priority: int = 0) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(settings.broker_url)
    return [json.loads(raw) for raw in client.lrange(queue_key("backend", priority), 0, -1)]


def states(db: Database) -> dict[int, tuple[str, str | None]]:
    with db.session() as session:
        return {task.issue_number: (task.state, task.wait_reason) for task in session.scalars(select(Task))}


@pytest.fixture
def limited(make_settings: Callable[..., Settings], db: Database) -> Iterator[tuple[Settings, Database]]:
    settings = make_settings(max_running_per_repo=1)
    database = Database(settings)
    yield settings, database
    database.dispose()


def test_a_high_priority_task_is_sent_on_the_high_list(db: Database, settings: Settings) -> None:
    dispatcher = Dispatcher(db, make_celery(settings))
    assert dispatcher.dispatch(new_task(db, 1, priority=1)) and dispatcher.dispatch(new_task(db, 2))
    assert [m["headers"]["id"] for m in messages(settings, 1)] == ["forgecrew-task-1-1"]
    assert [m["headers"]["id"] for m in messages(settings, 0)] == ["forgecrew-task-2-1"]


def test_the_reconciler_admits_the_triaged_tasks_it_resends(limited: tuple[Settings, Database]) -> None:
    settings, db = limited
    for number in (1, 2):
        new_task(db, number)
    reconciler = Reconciler(db, Dispatcher(db, make_celery(settings)))
    with db.session() as session:
        later = db_now(session) + timedelta(seconds=60)
    report = reconciler.run_once(later)
    assert report.resent == [1]
    assert states(db) == {1: ("queued", None),
                          2: ("waiting", "repository acme/calc has 1 of 1 tasks running "
                                         "(FORGECREW_MAX_RUNNING_PER_REPO)")}
    assert len(messages(settings)) == 1


def test_a_cancel_frees_the_slot_at_once(limited: tuple[Settings, Database]) -> None:
    settings, db = limited
    celery = make_celery(settings)
    dispatcher = Dispatcher(db, celery)
    first, second = new_task(db, 1), new_task(db, 2)
    assert dispatcher.dispatch(first) and not dispatcher.dispatch(second)
    assert states(db)[2][0] == "waiting"
    Operations(db, dispatcher, celery).cancel(first, actor="test")
    assert states(db)[2] == ("queued", None)  # released and sent, not left for the next sweep
    assert sorted(m["headers"]["id"] for m in messages(settings)) == ["forgecrew-task-1-1", "forgecrew-task-2-1"]


def test_intake_under_a_limit_holds_the_second_and_a_label_raises_a_waiting_ones_priority(
        limited: tuple[Settings, Database]) -> None:
    settings, db = limited
    with TestClient(create_app(settings, run_reconciler=False)) as client:
        for number in (1, 2):
            body = json.dumps(labeled_issue("forgecrew:backend", repo="acme/calc", number=number)).encode()
            assert client.post("/webhooks/github", content=body,
                               headers=headers("issues", body, delivery=f"d{number}")).status_code == 202
            client.app.state.services.sender.wait_idle()
        assert [state for state, _ in states(db).values()] == ["queued", "waiting"]
        raised = labeled_issue("forgecrew:priority-high", repo="acme/calc", number=2)
        body = json.dumps(raised).encode()
        answer = client.post("/webhooks/github", content=body, headers=headers("issues", body, delivery="d3"))
        assert answer.status_code == 200 and "now high priority" in answer.json()["status"], answer.text
    with db.session() as session:
        assert session.scalar(select(Task.priority).where(Task.issue_number == 2)) == 1
    assert len(messages(settings)) == 1  # the waiting one was not sent


def test_a_priority_label_on_a_queued_task_sends_it_again_on_the_high_list(db: Database, settings: Settings) -> None:
    with TestClient(create_app(settings, run_reconciler=False)) as client:
        body = json.dumps(labeled_issue("forgecrew:backend", repo="acme/calc", number=1)).encode()
        assert client.post("/webhooks/github", content=body, headers=headers("issues", body, delivery="d1")
                           ).status_code == 202
        client.app.state.services.sender.wait_idle()
        body = json.dumps(labeled_issue("forgecrew:priority-high", repo="acme/calc", number=1)).encode()
        answer = client.post("/webhooks/github", content=body, headers=headers("issues", body, delivery="d2"))
        assert answer.status_code == 202, answer.text
    assert [m["headers"]["id"] for m in messages(settings, 0)] == ["forgecrew-task-1-1"]
    assert [m["headers"]["id"] for m in messages(settings, 1)] == ["forgecrew-task-1-2"]  # claim runs it once
    with db.session() as session:
        task = session.scalars(select(Task)).one()
        assert (task.state, task.priority, task.dispatch_count) == ("queued", 1, 2)
        assert "priority normal -> high (labels)" in [event.detail for event in task.events]
