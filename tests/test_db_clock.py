"""Leases are set and judged by the database's clock, so skewed host clocks cannot break them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from common import migrate
from common.celery_app import make_celery
from common.db import Database, db_now
from common.leases import claim
from common.models import Task
from common.settings import Settings
from coordinator.dispatch import Dispatcher
from coordinator.reconciler import Reconciler
from tests.factories import make_task

pytestmark = pytest.mark.integration


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request: pytest.FixtureRequest, make_settings: Callable[..., Settings], db: Database,
            tmp_path: Path) -> Database:
    """A database of each kind forgecrew supports (the PostgreSQL one is emptied by `db`)."""
    if request.param == "postgresql":
        return db
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'clock.db'}")
    migrate.upgrade(settings)
    database = Database(settings)
    request.addfinalizer(database.dispose)
    return database


def test_db_now_is_aware_utc_and_close_to_now(backend: Database) -> None:
    with backend.session() as session:
        first = db_now(session)
        second = db_now(session)
    assert first.tzinfo is not None and first.utcoffset() == timedelta(0)
    assert abs(first - datetime.now(UTC)) < timedelta(seconds=5)
    assert second >= first  # the statement's time, not frozen at the transaction's start


def test_a_worker_with_a_slow_clock_still_holds_a_live_lease(backend: Database,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker host an hour behind must not write a lease the coordinator already sees expired."""
    def slow() -> datetime:
        return datetime.now(UTC) - timedelta(hours=1)

    monkeypatch.setattr("common.models.utcnow", slow)
    monkeypatch.setattr("common.leases.utcnow", slow, raising=False)
    task_id = make_task(backend)
    held = claim(backend, task_id, "slow-worker")
    assert held is not None
    with backend.session() as session:
        now = db_now(session)
        task = session.get(Task, task_id)
        assert now < task.lease_expires_at <= now + timedelta(seconds=backend.settings.lease_seconds)
    monkeypatch.undo()
    reconciler = Reconciler(backend, Dispatcher(backend, make_celery(backend.settings)))
    assert reconciler.run_once().requeued == []
    with backend.session() as session:
        assert session.get(Task, task_id).state == "running"
