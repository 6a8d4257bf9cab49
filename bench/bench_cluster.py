"""What the benchmarks that start a cluster share: giving back its database, Redis db and fake model.

Each run owns a fresh PostgreSQL database and a claimed Redis db number, so runs on a shared host
(CI, other people's benchmarks) never see each other's tasks; both must be given back even when
the run failed, or the next run's slot and the host's disk fill up.
"""

from __future__ import annotations

from typing import Any, Protocol


class _Released(Protocol):
    def release(self) -> None: ...


def release_cluster(*, db: Any, model: Any, broker_url: str, slot: _Released, db_name: str, pg_admin: str) -> None:
    """Close the run's connections, stop its fake model, empty and free its Redis db, drop its database."""
    import psycopg
    import redis

    db.dispose()  # before DROP DATABASE, which would otherwise wait on (or kill) our own connections
    model.stop()
    redis.Redis.from_url(broker_url).flushdb()
    slot.release()
    with psycopg.connect(pg_admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


class Scratch:
    """A benchmark's own state: a fresh database (migrated), a claimed Redis db, the fake model, settings.

    `overrides` are the benchmark's own settings on top of the shared ones (local forge, workspaces
    and forge under `root`, the fake model's URL and key). `close()` gives everything back.
    """

    def __init__(self, root: Any, *, pg_admin: str, redis_url: str, prefix: str, **overrides: Any) -> None:
        import uuid

        import psycopg

        from common import migrate
        from common.db import Database
        from common.settings import Settings
        from tests import redis_slots
        from tests.fakes.anthropic_server import DEFAULT_KEY, FakeAnthropic

        self.root, self.pg_admin = root, pg_admin
        self.db_name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        self.slot = redis_slots.claim(redis_url)
        self.model = FakeAnthropic().start()
        self.settings = Settings(**{
            "database_url": pg_admin.rsplit("/", 1)[0] + f"/{self.db_name}",
            "broker_url": f"{redis_url}/{self.slot.number}", "forge": "local",
            "workspace_root": root / "workspaces", "local_forge_root": root / "forge",
            "anthropic_api_key": DEFAULT_KEY, "anthropic_base_url": self.model.base_url, **overrides})
        migrate.upgrade(self.settings)
        self.db = Database(self.settings)

    def env(self) -> dict[str, str]:
        """The environment of a process of this run: the settings as FORGECREW_* and no one else's."""
        import os

        env = {key: value for key, value in os.environ.items() if not key.startswith("FORGECREW_")}
        for name, value in self.settings.model_dump().items():
            if value is None or name == "specialties":
                continue
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            env[f"FORGECREW_{name.upper()}"] = ",".join(value) if isinstance(value, list) else str(value)
        env["FORGECREW_HOME"] = str(self.root / "home")
        return env

    def close(self) -> None:
        release_cluster(db=self.db, model=self.model, broker_url=self.settings.broker_url, slot=self.slot,
                        db_name=self.db_name, pg_admin=self.pg_admin)
