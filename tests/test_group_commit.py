"""Group commit: many deliveries to a transaction, each answered after the commit, a failing one alone."""

from __future__ import annotations

import asyncio
import json
import uuid
from concurrent.futures import Future
from typing import Any

import pytest
from sqlalchemy import event, func, select

from common.db import Database
from common.models import Task, WebhookDelivery
from common.settings import Settings
from coordinator.services import build_services
from coordinator.webhooks.group_commit import GroupCommit
from coordinator.webhooks.router import Delivery, Outcome
from tests.support import labeled_issue

pytestmark = pytest.mark.integration


def item(number: int, *, event_name: str = "issues") -> tuple[dict[str, str], bytes, Future[Any]]:
    body = json.dumps(labeled_issue("forgecrew:backend", number=number)).encode()
    headers = {"x-github-event": event_name, "x-github-delivery": str(uuid.uuid4()),
               "content-type": "application/json"}
    return headers, body, Future()


def commits(db: Database) -> list[int]:
    seen: list[int] = []
    event.listen(db.engine, "commit", lambda _connection: seen.append(1))
    return seen


def counts(db: Database) -> tuple[int, int]:
    with db.session() as session:
        return (session.scalar(select(func.count()).select_from(Task)) or 0,
                session.scalar(select(func.count()).select_from(WebhookDelivery)) or 0)


def test_a_batch_of_deliveries_is_one_commit_and_each_gets_its_own_answer(settings: Settings, db: Database) -> None:
    services = build_services(settings)
    writer = GroupCommit(services)
    batch = [item(number) for number in (101, 102, 103)] + [item(101)]  # the last: an issue already active
    seen = commits(services.db)
    writer.write_batch(batch)
    answers = [future.result(0) for _, _, future in batch]
    assert len(seen) == 1
    assert [answer.status for answer in answers] == [202, 202, 202, 200]
    assert "already active" in answers[3].body["status"]
    assert answers[3].body["task_id"] == answers[0].body["task_id"]
    assert counts(db) == (3, 4)
    assert {answer.send.task_id for answer in answers[:3]} == {answer.body["task_id"] for answer in answers[:3]}


def test_a_failing_delivery_rolls_back_only_itself(settings: Settings, db: Database) -> None:
    services = build_services(settings)

    @services.router.on("boom")
    def explode(delivery: Delivery) -> Outcome:
        raise RuntimeError("handler bug")

    writer = GroupCommit(services)
    batch = [item(201), item(202, event_name="boom"), item(203)]
    seen = commits(services.db)
    writer.write_batch(batch)
    good, bad, other = (future for _, _, future in batch)
    assert good.result(0).status == 202 and other.result(0).status == 202
    with pytest.raises(RuntimeError, match="handler bug"):
        bad.result(0)
    assert len(seen) == 2  # the two good ones again, each alone; the failing one commits nothing
    assert counts(db) == (2, 2)
    with db.session() as session:
        recorded = set(session.scalars(select(WebhookDelivery.delivery_id)))
    assert recorded == {batch[0][0]["x-github-delivery"], batch[2][0]["x-github-delivery"]}


def test_concurrent_requests_are_answered_after_their_commit(settings: Settings, db: Database) -> None:
    services = build_services(settings)
    writer = GroupCommit(services)

    async def deliver_all() -> list[Any]:
        return await asyncio.gather(*(writer.process(headers, body) for headers, body, _ in
                                      (item(number) for number in range(300, 340))))

    try:
        answers = asyncio.run(deliver_all())
    finally:
        writer.stop()
    assert [answer.status for answer in answers] == [202] * 40
    with db.session() as session:  # every answered task is there, read by another connection
        ids = set(session.scalars(select(Task.id)))
    assert {answer.body["task_id"] for answer in answers} <= ids and len(ids) == 40
