"""Leases are set and judged by the database's clock, so skewed host clocks cannot break them."""

from __future__ import annotations

import os
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


def test_postgresql_connections_give_up_on_a_dead_peer_within_a_third_of_the_lease(db):
    """The options are on the connection's own socket (read back from the kernel); a URL's own choice wins."""
    import socket

    from common.db import tcp_options

    if db.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's TCP options")
    with db.engine.connect() as connection:
        fd = connection.connection.driver_connection.pgconn.socket
        sock = socket.socket(fileno=os.dup(fd))
        try:
            user_timeout = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
            keepalive = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
            idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
        finally:
            sock.close()
    assert user_timeout == int(db.settings.lease_seconds / 3 * 1000)
    assert keepalive == 1 and idle == 30
    own = tcp_options(db.settings, "postgresql+psycopg://h/db?keepalives_idle=5")
    assert "keepalives_idle" not in own and own["keepalives"] == 1
