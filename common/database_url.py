"""The FORGECREW_DATABASE_URL forms forgecrew runs on; anything else is refused in one line at settings load."""

from __future__ import annotations

SUPPORTED_FORMS = "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE or sqlite:///PATH"
# backend -> the one driver forgecrew ships and tests for it
DRIVERS = {"postgresql": "psycopg", "sqlite": "pysqlite"}


def normalise_url(url: str) -> str:
    """Let users write postgresql:// and still get psycopg 3 (the only driver we ship)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def check_database_url(url: str) -> None:
    """Raise ValueError naming the supported forms, so a typo is not a driver's traceback at first use.

    The URL itself is never repeated: it may carry a password.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(normalise_url(url))
    except (ArgumentError, ValueError):
        raise ValueError(f"not a database URL; use {SUPPORTED_FORMS}") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend not in DRIVERS:
        raise ValueError(f"{backend} is not supported; use {SUPPORTED_FORMS}")
    if driver and driver != DRIVERS[backend]:
        raise ValueError(f"driver {backend}+{driver} is not supported; use {SUPPORTED_FORMS}")
