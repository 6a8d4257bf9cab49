"""Engines and sessions built from settings, never at import time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, create_engine, event, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from common.database_url import check_database_url, normalise_url
from common.errors import SettingsError
from common.settings import Settings

__all__ = ["Database", "db_now", "make_engine", "normalise_url"]


def make_engine(settings: Settings) -> Engine:
    """An engine whose transactions lock what they must on both PostgreSQL and SQLite."""
    try:
        check_database_url(settings.database_url)  # settings built by model_copy skip the validator
    except ValueError as exc:
        raise SettingsError(f"FORGECREW_DATABASE_URL: {exc}") from None
    url = normalise_url(settings.database_url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    # Sized past a coordinator process's concurrent requests (16 connections per host in the intake
    # bench): overflow connections are closed on return, and a new PostgreSQL connection costs a fork.
    return create_engine(url, pool_pre_ping=True, pool_size=16, max_overflow=16,
                         connect_args=tcp_options(settings, url))


def tcp_options(settings: Settings, url: str) -> dict[str, Any]:
    """libpq keepalives and a TCP user timeout, unless the URL sets its own.

    Without them a connection cut by a partition (no FIN, no RST) hangs a query until the kernel
    gives up, about 15 minutes: a worker renewing its lease would hold its slot long after the
    lease ran out. With them the query fails within a third of the lease, the heartbeat gives up
    before the lease ends, and the pool's pre-ping replaces the connection.
    """
    from sqlalchemy.engine import make_url

    given = set(make_url(url).query)
    user_timeout_ms = int(max(settings.lease_seconds / 3, 2) * 1000)
    options = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
               "keepalives_count": 3, "tcp_user_timeout": user_timeout_ms}
    return {name: value for name, value in options.items() if name not in given}


def _sqlite_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # SQLite ignores SELECT ... FOR UPDATE, and pysqlite's own deferred BEGIN lets two
    # transactions read the same row before either writes. Take over transaction control
    # (SQLAlchemy's documented pysqlite recipe): the driver emits no BEGIN of its own, so
    # SAVEPOINT / session.begin_nested() work too, and _sqlite_begin starts each one.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # IMMEDIATE takes the write lock up front, so a claim's read and its write are one step as
    # FOR UPDATE makes them on PostgreSQL; the others wait (busy_timeout). Reads take it too:
    # SQLite has a single writer anyway, and forgecrew's transactions are short.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


# Session.info key of a clock reading a short transaction took once and reuses (webhook intake)
FROZEN_NOW = "forgecrew.db_now"


def clock_sql(dialect: str) -> ColumnElement[Any]:
    """The database's clock as an expression, to read it inside another statement (RETURNING)."""
    if dialect == "sqlite":
        return func.strftime("%Y-%m-%d %H:%M:%f", "now")
    return func.statement_timestamp()


def clock_value(raw: Any) -> datetime:
    """What clock_sql returned, as aware UTC."""
    if isinstance(raw, str):
        return datetime.fromisoformat(raw).replace(tzinfo=UTC)
    return raw.astimezone(UTC)


def insert_for(dialect: str) -> Any:
    """The dialect's INSERT, which has ON CONFLICT (PostgreSQL and SQLite both do)."""
    return sqlite_insert if dialect == "sqlite" else pg_insert


def db_now(session: Session) -> datetime:
    """The database's clock as aware UTC: leases are set and judged by one clock, not each host's."""
    frozen = session.info.get(FROZEN_NOW)
    if frozen is not None:
        return frozen
    return clock_value(session.execute(select(clock_sql(session.get_bind().dialect.name))).scalar_one())


class Database:
    """An engine and its session factory; one per process (re-made after a fork)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self._sessions.begin() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
