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
