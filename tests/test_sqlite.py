"""SQLite, the zero-setup default of `forgecrew up`: claims stay exclusive across engines."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from common import migrate
from common.celery_app import make_celery
from common.db import Database
from common.leases import Claim, claim
from common.models import Task, WebhookDelivery
from common.settings import Settings
from coordinator.dispatch import Dispatcher
from tests.factories import make_task

ENGINES = 6
ROUNDS = 5


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Iterator[Settings]:
    """A migrated SQLite file database, as `forgecrew up` makes by default."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'state.db'}")
    migrate.upgrade(settings)
    yield settings


def claim_at_once(settings: Settings, task_id: int, engines: int) -> list[Claim | None]:
    """`engines` threads, each with its own engine as separate worker processes would have."""
    databases = [Database(settings) for _ in range(engines)]
    barrier = threading.Barrier(engines)
    results: list[Claim | None] = []
    errors: list[BaseException] = []

    def worker(db: Database, name: str) -> None:
        barrier.wait()
        try:
            results.append(claim(db, task_id, name))
        except BaseException as exc:  # noqa: BLE001  (reported below; a thread must not swallow it)
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(db, f"w{i}")) for i, db in enumerate(databases)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for db in databases:
        db.dispose()
    assert errors == []
    return results


def test_concurrent_claims_on_sqlite_only_one_wins(sqlite_settings: Settings) -> None:
    db = Database(sqlite_settings)
    try:
        for round_number in range(ROUNDS):
            task_id = make_task(db, issue_number=round_number + 1)
            results = claim_at_once(sqlite_settings, task_id, ENGINES)
            winners = [result for result in results if result is not None]
            assert len(winners) == 1, f"round {round_number}: {winners}"
            with db.session() as session:
                task = session.get(Task, task_id)
                assert (task.state, task.attempt, task.lease_owner) == ("running", 1, winners[0].owner)
                assert [e.to_state for e in task.events].count("running") == 1
    finally:
        db.dispose()


def test_savepoint_rolls_back_only_its_own_writes(sqlite_settings: Settings) -> None:
    """coordinator.intake relies on begin_nested(): a lost race must not undo the delivery row."""
    db = Database(sqlite_settings)
    try:
        make_task(db, issue_number=7)
        with db.session() as session:
            session.add(WebhookDelivery(delivery_id="kept", event="issues", action="labeled"))
            session.flush()
            with pytest.raises(IntegrityError), session.begin_nested():
                # a second active task for the same issue breaks the partial unique index
                session.add(Task(repo="acme/app", issue_number=7, specialty="backend", state="queued"))
                session.flush()
        with db.session() as session:
            assert session.scalars(select(WebhookDelivery.delivery_id)).all() == ["kept"]
            assert session.scalar(select(func.count()).select_from(Task)) == 1
    finally:
        db.dispose()


def test_a_late_send_record_never_moves_a_claimed_task(sqlite_settings: Settings) -> None:
    db = Database(sqlite_settings)
    try:
        task_id = make_task(db)
        assert claim(db, task_id, "w1") is not None  # the message beat the dispatcher's commit
        Dispatcher(db, make_celery(sqlite_settings)).record_sent(task_id, 1, actor="d", note="")
        with db.session() as session:
            task = session.get(Task, task_id)
            assert (task.state, task.dispatched_at) == ("running", None)
            assert [e.to_state for e in task.events] == ["pending", "triaged", "queued", "running"]
    finally:
        db.dispose()
