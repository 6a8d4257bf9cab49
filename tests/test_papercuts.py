"""A newcomer's mistakes, each answered by one clear line (through the real CLI), and small wrongs put right."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from common import migrate
from common.db import Database, make_engine
from common.errors import SettingsError
from common.models import Task, TaskEvent
from common.settings import Settings, load_settings
from common.states import TaskState
from common.tool_names import TOOL_NAMES
from common.transitions import transition
from tests.factories import make_task
from tests.support import free_port

SUPPORTED = "use postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE or sqlite:///PATH"


def forgecrew(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "FORGECREW_HOME": os.environ["FORGECREW_HOME"]}
    return subprocess.run([sys.executable, "-m", "coordinator.cli", *args], env={**base, **(env or {})}, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, check=False)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("forgecrew: "), stderr
    return lines[0]


# -- settings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url,reason", [
    ("nonsense", "not a database URL"),
    ("mysql://app:hunter2@db.example/app", "mysql is not supported"),
    ("postgresql+psycopg2://app@db.example/app", "driver postgresql+psycopg2 is not supported"),
])
def test_an_unsupported_database_url_is_one_line_naming_the_forms(url: str, reason: str) -> None:
    done = forgecrew("tasks", "list", env={"FORGECREW_DATABASE_URL": url})
    assert done.returncode == 2
    assert one_line(done.stderr) == f"forgecrew: invalid settings: FORGECREW_DATABASE_URL: {reason}; {SUPPORTED}"
    assert "hunter2" not in done.stderr


def test_settings_that_skipped_validation_are_refused_by_the_engine() -> None:
    settings = Settings(database_url="sqlite://").model_copy(update={"database_url": "nonsense"})
    with pytest.raises(SettingsError, match="^FORGECREW_DATABASE_URL: not a database URL; use postgresql://"):
        make_engine(settings)


def test_an_unknown_tool_of_a_specialty_is_refused_with_the_known_names(tmp_path: Path) -> None:
    config = tmp_path / "forgecrew.toml"
    config.write_text('[[specialties]]\nname = "docs"\ntools = ["read_file", "edit_fil"]\n')
    done = forgecrew("tasks", "list", env={"FORGECREW_CONFIG": str(config)})
    assert done.returncode == 2
    assert one_line(done.stderr) == (
        "forgecrew: invalid settings: FORGECREW_SPECIALTIES.0.TOOLS: unknown tool 'edit_fil' (did you mean "
        "'edit_file'?); known tools: " + ", ".join(TOOL_NAMES))


def test_known_tools_and_finish_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGECREW_SPECIALTIES", '[{"name": "docs", "tools": ["read_file", "edit_file", "finish"]}]')
    assert load_settings().specialties[0].tools == ["read_file", "edit_file", "finish"]


def test_the_tool_names_settings_check_are_the_toolboxs() -> None:
    from workers.tools.toolbox import SCHEMAS

    assert set(TOOL_NAMES) == {schema["name"] for schema in SCHEMAS}


# -- command-line arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize("args,reason", [
    (["--log-level", "LOUD", "tasks", "list"], "Invalid value for '--log-level': 'LOUD' is not one of"),
    (["tasks", "list", "--limit", "-1"], "Invalid value for '--limit': -1 is not in the range x>=1"),
    (["workspaces", "gc", "--days", "-1"], "Invalid value for '--days': -1.0 is not in the range x>=0"),
])
def test_bad_option_values_are_one_line(tmp_path: Path, args: list[str], reason: str) -> None:
    done = forgecrew(*args, env={"FORGECREW_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"})
    assert done.returncode == 2
    assert reason in one_line(done.stderr)
    assert not (tmp_path / "x.db").exists()


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    done = forgecrew("--log-level", "warning", "db", "current", env={
        "FORGECREW_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"})
    assert done.returncode == 0, done.stderr


def test_db_upgrade_to_an_unknown_revision_is_one_line(tmp_path: Path) -> None:
    done = forgecrew("db", "upgrade", "nosuch", env={"FORGECREW_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"})
    assert done.returncode == 2
    assert one_line(done.stderr) == (
        "forgecrew: cannot upgrade the database to 'nosuch': Can't locate revision identified by 'nosuch' "
        f"(revisions: {', '.join(migrate.known_revisions(migrate.alembic_config(Settings())))}, head)")


def test_db_upgrade_is_quiet_unless_debug_and_says_where_it_went(tmp_path: Path) -> None:
    env = {"FORGECREW_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    first = forgecrew("db", "upgrade", env=env)
    assert first.returncode == 0 and first.stderr == "", first.stderr  # no alembic INFO lines
    assert first.stdout.startswith("database at ") and first.stdout.strip().endswith("(was empty)")
    again = forgecrew("--log-level", "DEBUG", "db", "upgrade", env=env)
    assert again.stdout.strip().endswith("(unchanged)")
    assert "alembic.runtime.migration" in again.stderr  # DEBUG shows them


@pytest.mark.parametrize("repo,reason", [
    ("/no/such/checkout", "/no/such/checkout: no such directory"),
    ("./missing", "./missing: no such directory"),
    ("a/b/c", "a/b/c: no such directory"),
    ("myproject", "myproject: no such directory, and not OWNER/NAME of a repository on the forge"),
    ("acme/", "'acme/' is not OWNER/NAME"),
    ("-acme/app", "'-acme/app' is not OWNER/NAME"),
])
def test_run_refuses_a_bad_repo_before_asking_for_credentials(tmp_path: Path, repo: str, reason: str) -> None:
    done = forgecrew("run", "--repo", repo, "--title", "x", cwd=tmp_path,
                     env={"FORGECREW_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"})
    assert done.returncode == 2
    assert one_line(done.stderr).startswith(f"forgecrew: Invalid value for --repo: {reason}")
    assert "FORGECREW_" not in done.stderr and not (tmp_path / "x.db").exists()


def test_run_prints_its_failure_once(tmp_path: Path) -> None:
    from tests.fakes.anthropic_server import DEFAULT_KEY, FakeAnthropic, error

    project = tmp_path / "calc"
    project.mkdir()
    (project / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    for args in (["init", "-q", "-b", "main"], ["add", "."],
                 ["-c", "user.name=dev", "-c", "user.email=dev@example.com", "commit", "-qm", "calc"]):
        subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)
    with FakeAnthropic([error(401, "authentication_error", "invalid x-api-key")]) as model:
        done = forgecrew("run", "--repo", str(project), "--title", "fix add", cwd=tmp_path, env={
            "FORGECREW_DATABASE_URL": f"sqlite:///{tmp_path / 'run.db'}", "FORGECREW_ANTHROPIC_API_KEY": DEFAULT_KEY,
            "FORGECREW_ANTHROPIC_BASE_URL": model.base_url, "FORGECREW_WORKSPACE_ROOT": str(tmp_path / "ws"),
            "FORGECREW_LOCAL_FORGE_ROOT": str(tmp_path / "forge"), "HOME": str(tmp_path)})
    assert done.returncode == 1, done.stdout + done.stderr
    everything = done.stdout + done.stderr
    assert everything.count("failed: model error") == 1, everything
    assert done.stderr.strip().splitlines()[-1].startswith("forgecrew: task 1 failed: model error")
    assert "[task 1] agent ended: model_error" in done.stdout  # the progress is still shown


# -- the broker ------------------------------------------------------------------------------------------


def _down_broker() -> str:
    return f"redis://:pw@127.0.0.1:{free_port()}/0"


def test_wait_for_broker_gives_up_after_the_timeout_naming_the_variable() -> None:
    from common.broker_check import wait_for_broker

    settings = Settings(database_url="sqlite://", broker_url=_down_broker())
    started = time.monotonic()
    with pytest.raises(SettingsError) as caught:
        wait_for_broker(settings, timeout=1.0)
    assert 1.0 <= time.monotonic() - started < 6
    message = str(caught.value)
    assert message.startswith("cannot reach the broker at FORGECREW_BROKER_URL=redis://:**@127.0.0.1:")
    assert "within 1s" in message and "\n" not in message and ":pw@" not in message


@pytest.mark.integration
def test_wait_for_broker_returns_at_once_when_it_is_up(settings: Settings) -> None:
    from common.broker_check import wait_for_broker

    started = time.monotonic()
    wait_for_broker(settings, timeout=5)
    assert time.monotonic() - started < 3


def test_a_running_worker_reconnects_for_ever() -> None:
    from common.celery_app import make_celery

    assert make_celery(Settings(database_url="sqlite://")).conf.broker_connection_max_retries is None


def _worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {"FORGECREW_DATABASE_URL": settings.database_url, "FORGECREW_BROKER_URL": settings.broker_url,
            "FORGECREW_FORGE": "local", "FORGECREW_ANTHROPIC_API_KEY": "sk-ant-test",
            "FORGECREW_WORKSPACE_ROOT": str(settings.workspace_root), **extra}


@pytest.mark.integration
def test_worker_refuses_to_start_when_the_broker_is_down(settings: Settings) -> None:
    started = time.monotonic()
    done = forgecrew("worker", "--specialty", "backend", env=_worker_env(
        settings, FORGECREW_BROKER_URL=_down_broker(), FORGECREW_BROKER_START_TIMEOUT_SECONDS="1"))
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert line.startswith("forgecrew: cannot reach the broker at FORGECREW_BROKER_URL=redis://:**@127.0.0.1:")
    assert time.monotonic() - started < 60


@pytest.mark.integration
def test_reconcile_once_fails_when_the_broker_is_down_and_passes_when_up(settings: Settings, db: Database) -> None:
    down = forgecrew("reconcile", "--once", env=_worker_env(
        settings, FORGECREW_BROKER_URL=_down_broker(), FORGECREW_BROKER_START_TIMEOUT_SECONDS="0.5"))
    assert down.returncode == 2 and "FORGECREW_BROKER_URL" in one_line(down.stderr)
    up = forgecrew("reconcile", "--once", env=_worker_env(settings))
    assert up.returncode == 0, up.stderr
    assert up.stdout.startswith("resent [] requeued [] failed []")


@pytest.mark.integration
def test_a_round_whose_sends_fail_is_reported(make_settings: Callable[..., Settings], db: Database) -> None:
    """The broker answered at start but not during the round: --once must not report success."""
    from common.celery_app import make_celery
    from coordinator.dispatch import Dispatcher
    from coordinator.reconciler import Reconciler

    settings = make_settings(broker_url=_down_broker())
    make_task(db)  # triaged, its send lost: due for a resend once the grace has passed
    database = Database(settings)
    try:
        reconciler = Reconciler(database, Dispatcher(database, make_celery(settings)))
        report = reconciler.run_once(now=datetime.now(UTC) + timedelta(minutes=5))
    finally:
        database.dispose()
    assert report.broker_error == "the broker refused a send (see the warning logged)"


@pytest.mark.integration
def test_a_worker_started_as_root_prints_no_superuser_warning(settings: Settings, processes: list,  # type: ignore[type-arg]
                                                              tmp_path: Path) -> None:
    from tests.support import start_worker

    if os.geteuid() != 0:
        pytest.skip("Celery warns only when the worker runs as root")
    env = {key: value for key, value in os.environ.items() if not key.startswith("FORGECREW_")}
    env.update(FORGECREW_HOME=os.environ["FORGECREW_HOME"], **_worker_env(settings))
    worker = start_worker(env, tmp_path, "backend")
    processes.append(worker)
    log = worker.log()
    assert "superuser privileges" not in log and "SecurityWarning" not in log


# -- the audit log's clock -------------------------------------------------------------------------------


@pytest.mark.integration
def test_events_never_go_back_in_time_whatever_the_hosts_clock(db: Database,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The first event used to take Python's clock while the rest took the database's."""
    monkeypatch.setattr("common.models.utcnow", lambda: datetime.now(UTC) + timedelta(hours=1))
    task_id = make_task(db)
    with db.session() as session:
        events = session.scalars(select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id)).all()
        stamps = [event.at for event in events]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] < timedelta(minutes=1)


@pytest.mark.integration
def test_events_never_go_back_in_time_when_the_database_clock_steps_back(db: Database,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    task_id = make_task(db)
    from common import transitions

    real = transitions.db_now
    monkeypatch.setattr(transitions, "db_now", lambda session: real(session) - timedelta(hours=2))  # NTP step
    with db.session() as session:
        task = session.get(Task, task_id)
        transition(session, task, TaskState.QUEUED, actor="test")
        transition(session, task, TaskState.RUNNING, actor="test")  # two in one transaction
    with db.session() as session:
        stamps = [event.at for event in session.get(Task, task_id).events]
    assert stamps == sorted(stamps)
