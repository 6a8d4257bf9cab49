"""Real PostgreSQL and Redis for tests: a database and a Redis db number per test session."""

from __future__ import annotations

import fcntl
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import text

from common import migrate
from common.db import Database
from common.models import Base
from common.settings import Settings
from tests import redis_slots
from tests.git_source import Source
from tests.support import SECRET, Process
from workers.sandbox import Sandbox, SandboxPaths, make_sandbox
from workers.workspace import Workspace, WorkspaceManager

pytest_plugins = ["tests.pipeline_support"]  # model, forge_settings and forge for pipeline tests
DEPLOY_TESTS = Path(__file__).parent / "deploy"


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Under pytest-xdist, a Docker test runs alone and the other tests run beside each other.

    With a Docker test beside the rest, the daemon now and then could not read a running
    container's /etc/passwd ("unable to find user ...") for a minute or more, so health checks and
    `exec` failed; run alone, it never did. A readers-writer lock on two files of this run: every
    test holds `main` shared, a Docker test exclusive; a waiting Docker test holds `turnstile` so
    new tests queue behind it instead of starving it. Outermost, so no test's timeout counts the wait.
    """
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run:
        yield
        return
    folder = Path(tempfile.gettempdir())
    exclusive = DEPLOY_TESTS in Path(item.path).parents
    with open(folder / f"forgecrew-tests-{run}.turnstile", "a") as turnstile, \
            open(folder / f"forgecrew-tests-{run}.main", "a") as main:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        if not exclusive:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        fcntl.flock(main, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(main, fcntl.LOCK_UN)
            if exclusive:
                fcntl.flock(turnstile, fcntl.LOCK_UN)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The Docker tests share images and a daemon's build cache: under pytest-xdist (pyproject's addopts,
    --dist loadgroup) they run one after another on one worker (and alone: pytest_runtest_protocol)."""
    for item in items:
        if DEPLOY_TESTS in Path(item.path).parents:
            item.add_marker(pytest.mark.xdist_group("docker"))

PG_ADMIN = os.environ.get("FORGECREW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("FORGECREW_TEST_REDIS", "redis://127.0.0.1:6379")
AMQP_URL = os.environ.get("FORGECREW_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")


@pytest.fixture(autouse=True)
def state_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test (and every process it starts) gets its own FORGECREW_HOME, never the user's."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("FORGECREW_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database, migrated, dropped at the end of the session."""
    name = f"forgecrew_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    migrate.upgrade(Settings(database_url=url))
    yield url
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_slot() -> Iterator[redis_slots.Slot]:
    """A Redis database number claimed for this session alone (SET NX in db 0); flushed before and after."""
    slot = redis_slots.claim(REDIS_URL)
    db_client = redis.Redis.from_url(f"{REDIS_URL}/{slot.number}")
    db_client.flushdb()
    yield slot
    db_client.flushdb()
    db_client.close()
    slot.release()


@pytest.fixture(scope="session")
def redis_db(redis_slot: redis_slots.Slot) -> int:
    return redis_slot.number


@pytest.fixture
def broker_url(redis_slot: redis_slots.Slot) -> Iterator[str]:
    redis_slot.renew()  # a long session keeps its claim
    url = f"{REDIS_URL}/{redis_slot.number}"
    redis.Redis.from_url(url).flushdb()
    yield url
    redis.Redis.from_url(url).flushdb()


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """A RabbitMQ virtual host of this test's own on the machine's RabbitMQ, deleted afterwards."""
    import shutil
    import subprocess

    ctl = shutil.which("rabbitmqctl") or shutil.which("rabbitmqctl", path="/usr/sbin:/sbin")
    assert ctl, "RabbitMQ's rabbitmqctl is not installed (.ci/run installs and starts rabbitmq-server)"
    vhost = f"forgecrew-test-{uuid.uuid4().hex[:10]}"

    def ctl_run(*args: str) -> None:
        subprocess.run([ctl, "-q", *args], check=True, capture_output=True, timeout=60)

    ctl_run("add_vhost", vhost)
    ctl_run("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"{AMQP_URL}/{vhost}"
    ctl_run("delete_vhost", vhost)


@pytest.fixture
def make_settings(pg_url: str, broker_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a test: real PostgreSQL and Redis, a test secret, an allowlist."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": pg_url,
            "broker_url": broker_url,
            "webhook_secret": SECRET,
            "repo_allowlist": ["Codertocat/*", "acme/*"],
            "workspace_root": tmp_path / "workspaces",
            "local_forge_root": tmp_path / "forge",
            "dispatch_timeout_seconds": 1.0,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    """The test database, emptied after each test."""
    database = Database(settings)
    yield database
    with database.session() as session:
        tables = ", ".join(table.name for table in reversed(Base.metadata.sorted_tables))
        session.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    database.dispose()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """Server processes a test started; each is stopped (SIGTERM, then SIGKILL) at the end."""
    started: list[Process] = []
    yield started
    for proc in reversed(started):
        proc.stop()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a forgecrew subprocess needs to see the same settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FORGECREW_")}
    for name, value in settings.model_dump().items():
        if value is None or name == "specialties":
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, list):
            value = ",".join(value)
        env[f"FORGECREW_{name.upper()}"] = str(value)
    return env


@pytest.fixture
def source(tmp_path: Path) -> Source:
    """A bare repository playing the forge, with one commit on main."""
    return Source(tmp_path)


@pytest.fixture
def manager(tmp_path: Path) -> WorkspaceManager:
    return WorkspaceManager(tmp_path / "workspaces")


@pytest.fixture
def prepare(manager: WorkspaceManager, source: Source) -> Callable[..., Workspace]:
    """Prepare task `task_id`'s workspace of `source` as acme/app (no credentials)."""
    def make(task_id: int, branch: str | None = None, **kwargs: Any) -> Workspace:
        return manager.prepare(task_id, "acme/app", source.url, branch or f"forgecrew/run-{task_id}", **kwargs)
    return make


@pytest.fixture(scope="session")
def sandbox() -> Sandbox:
    """The sandbox workers use on this host (bubblewrap; as root it drops to nobody)."""
    return make_sandbox(Settings(database_url="sqlite://"))


def task_paths(checkout: Path) -> SandboxPaths:
    """A task's directories around `checkout` (home and tmp beside it), as the pipeline lays them out."""
    paths = SandboxPaths(checkout, checkout.parent / "home", checkout.parent / "tmp", name=checkout.name)
    for directory in (paths.checkout, paths.home, paths.tmp):
        directory.mkdir(parents=True, exist_ok=True)
    return paths
