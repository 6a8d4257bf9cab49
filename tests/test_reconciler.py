"""The reconciler resends only what the broker lost, on real PostgreSQL and Redis."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import redis
from sqlalchemy import update

from common.celery_app import make_celery
from common.db import Database, db_now
from common.models import Task
from common.settings import Settings
from coordinator.dispatch import Dispatcher
from coordinator.reconciler import Reconciler
from tests.factories import make_task
from tests.support import queue_key

pytestmark = pytest.mark.integration
QUEUE = queue_key("backend")  # the list of normal-priority messages


@pytest.fixture
def reconciler(settings: Settings, db: Database) -> Iterator[Reconciler]:
    database = Database(settings)
    yield Reconciler(database, Dispatcher(database, make_celery(settings)))
    database.dispose()


def later(db: Database, settings: Settings) -> datetime:
    """A moment when every task sent now counts as queued for too long."""
    with db.session() as session:
        return db_now(session) + timedelta(seconds=settings.queued_resend_seconds + 60)


def message_ids(client: redis.Redis, key: str = QUEUE) -> list[str]:
    return [json.loads(raw)["headers"]["id"] for raw in client.lrange(key, 0, -1)]


def details(db: Database, task_id: int) -> list[tuple[str | None, str, str]]:
    with db.session() as session:
        return [(e.from_state, e.to_state, e.detail) for e in session.get(Task, task_id).events]


def test_old_queued_task_is_resent_only_once_the_broker_lost_its_message(
        reconciler: Reconciler, db: Database, settings: Settings) -> None:
    client = redis.Redis.from_url(settings.broker_url)
    task_id = make_task(db)
    assert reconciler.dispatcher.dispatch(task_id)
    assert message_ids(client) == [f"forgecrew-task-{task_id}-1"]
    when = later(db, settings)
    for _ in range(3):  # a waiting backlog gets no duplicates and no audit noise, round after round
        assert reconciler.run_once(when).resent == []
    assert message_ids(client) == [f"forgecrew-task-{task_id}-1"]
    assert [to for _, to, _ in details(db, task_id)] == ["pending", "triaged", "queued"]

    client.delete(QUEUE)  # a Redis restart without persistence
    assert reconciler.run_once(when).resent == [task_id]
    assert message_ids(client) == [f"forgecrew-task-{task_id}-2"]
    assert details(db, task_id)[-1] == ("queued", "queued",
                                        "sent to queue backend (resent: its message is no longer in the broker)")
    assert reconciler.run_once(when).resent == []  # the new message is there now


def test_a_message_in_a_priority_list_is_found(reconciler: Reconciler, db: Database, settings: Settings) -> None:
    client = redis.Redis.from_url(settings.broker_url)
    task_id = make_task(db)
    reconciler.dispatcher.dispatch(task_id)
    client.rename(QUEUE, queue_key("backend", -1))  # where kombu keeps low-priority ones
    assert reconciler.run_once(later(db, settings)).resent == []


def test_a_delivered_unacked_message_is_not_resent(reconciler: Reconciler, db: Database,
                                                   settings: Settings) -> None:
    """A worker that took the message (reserved, acks_late) holds it in kombu's unacked hash."""
    client = redis.Redis.from_url(settings.broker_url)
    task_id = make_task(db)
    reconciler.dispatcher.dispatch(task_id)
    with make_celery(settings).connection_for_read() as connection:
        message = connection.default_channel.basic_get(QUEUE, no_ack=False)
        assert message is not None and client.llen(QUEUE) == 0 and client.hlen("unacked") == 1
        assert reconciler.run_once(later(db, settings)).resent == []
        message.ack()
    assert reconciler.run_once(later(db, settings)).resent == [task_id]  # acked yet still queued: lost


def test_triaged_and_requeued_tasks_are_sent_without_looking(reconciler: Reconciler, db: Database,
                                                             settings: Settings) -> None:
    client = redis.Redis.from_url(settings.broker_url)
    triaged = make_task(db, issue_number=1)
    requeued = make_task(db, issue_number=2)
    with db.session() as session:
        session.execute(update(Task).where(Task.id == requeued).values(state="queued", dispatched_at=None))
    assert sorted(reconciler.run_once(later(db, settings)).resent) == [triaged, requeued]
    assert sorted(message_ids(client)) == sorted([f"forgecrew-task-{triaged}-1", f"forgecrew-task-{requeued}-1"])


def test_a_send_that_fails_is_due_again_next_round(make_settings, db: Database) -> None:  # type: ignore[no-untyped-def]
    from tests.support import free_port

    settings = make_settings()
    down = make_settings(broker_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    requeued = make_task(db)
    with db.session() as session:
        session.execute(update(Task).where(Task.id == requeued).values(state="queued", dispatched_at=None))
    broken = Reconciler(Database(down), Dispatcher(Database(down), make_celery(down)))
    assert broken.run_once().resent == []
    with db.session() as session:
        assert session.get(Task, requeued).dispatched_at is None  # the reservation was given back
    working = Reconciler(Database(settings), Dispatcher(Database(settings), make_celery(settings)))
    assert working.run_once().resent == [requeued]  # at once, not QUEUED_RESEND_SECONDS later
    assert message_ids(redis.Redis.from_url(settings.broker_url)) == [f"forgecrew-task-{requeued}-2"]
    for reconciler in (broken, working):
        reconciler.db.dispose()
        reconciler.dispatcher.db.dispose()


def test_two_coordinators_never_resend_the_same_task(settings: Settings, db: Database) -> None:
    client = redis.Redis.from_url(settings.broker_url)
    task_ids = [make_task(db, issue_number=n) for n in range(1, 31)]
    when = later(db, settings)
    reconcilers = [Reconciler(Database(settings), Dispatcher(Database(settings), make_celery(settings)))
                   for _ in range(3)]
    barrier = threading.Barrier(len(reconcilers))
    resent: list[int] = []

    def run(reconciler: Reconciler) -> None:
        barrier.wait()
        resent.extend(reconciler.run_once(when).resent)

    threads = [threading.Thread(target=run, args=(r,)) for r in reconcilers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for reconciler in reconcilers:
        reconciler.db.dispose()
        reconciler.dispatcher.db.dispose()
    assert sorted(resent) == task_ids
    assert client.llen(QUEUE) == len(task_ids)


def test_amqp_cannot_be_looked_into_so_age_decides() -> None:
    """RabbitMQ offers no way to see a queued message without consuming it."""
    import socket

    from coordinator.broker_messages import held_message_ids

    url = "amqp://guest:guest@127.0.0.1:5672//"
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        pytest.skip("no RabbitMQ on 127.0.0.1:5672")
    assert held_message_ids(make_celery(Settings(broker_url=url)), [QUEUE]) is None
