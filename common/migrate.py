"""Apply the Alembic migrations shipped inside the package (`forgecrew db upgrade`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.util import CommandError

from common.db import normalise_url
from common.errors import ForgecrewError
from common.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


class MigrationRefused(ForgecrewError):
    """Alembic refused the revision asked for (or the one the database is at); the message says which."""


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", normalise_url(settings.database_url).replace("%", "%%"))
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    if settings.database_url == settings.state_home.database_url:
        settings.state_home.ensure()  # the default SQLite file lives in HOME, which may not exist yet
    config = alembic_config(settings)
    try:
        command.upgrade(config, revision)
    except CommandError as exc:
        raise MigrationRefused(f"cannot upgrade the database to {revision!r}: {_one_line(exc)} "
                               f"(revisions: {', '.join(known_revisions(config))}, head)") from None


def known_revisions(config: Config) -> list[str]:
    """The revisions shipped, oldest first."""
    from alembic.script import ScriptDirectory

    return [script.revision for script in reversed(list(ScriptDirectory.from_config(config).walk_revisions()))]


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def downgrade(settings: Settings, revision: str) -> None:
    command.downgrade(alembic_config(settings), revision)


def current_revision(settings: Settings) -> str | None:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    if settings.database_url == settings.state_home.database_url and not settings.state_home.database.exists():
        return None  # the default database is made by the first upgrade; do not create HOME to read it
    engine = create_engine(normalise_url(settings.database_url))
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
