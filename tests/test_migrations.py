"""Migrations apply on PostgreSQL and SQLite and match the models exactly."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from common import migrate
from common.db import normalise_url
from common.models import Base
from common.settings import Settings
from tests.conftest import PG_ADMIN


@pytest.fixture
def empty_pg() -> Iterator[str]:
    name = f"forgecrew_mig_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def assert_matches_models(url: str) -> None:
    engine = create_engine(normalise_url(url))
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        tables = set(inspect(connection).get_table_names())
    engine.dispose()
    assert diff == [], f"migrations and models differ: {diff}"
    assert {"tasks", "task_events", "webhook_deliveries"} <= tables


@pytest.mark.integration
def test_postgresql_upgrade_downgrade_upgrade(empty_pg: str) -> None:
    settings = Settings(database_url=empty_pg)
    migrate.upgrade(settings)
    assert_matches_models(empty_pg)
    migrate.downgrade(settings, "base")
    assert migrate.current_revision(settings) is None
    migrate.upgrade(settings)
    assert migrate.current_revision(settings) is not None


def test_sqlite_upgrade_matches_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'forgecrew.db'}"
    settings = Settings(database_url=url)
    migrate.upgrade(settings)
    assert_matches_models(url)
    migrate.downgrade(settings, "base")
    migrate.upgrade(settings)


def test_cli_db_upgrade_on_sqlite(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {"FORGECREW_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "PATH": "/usr/bin:/bin",
           "FORGECREW_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "coordinator.cli", "db", "upgrade"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "database at " in done.stdout
