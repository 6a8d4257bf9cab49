"""The `forgecrew` command as a user runs it: exit status and one-line reasons on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.db import Database
from common.models import Task
from common.settings import Settings
from common.states import TaskState
from common.transitions import transition
from tests.factories import make_task
from tests.support import SECRET


def forgecrew(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordinator.cli", *args], env={"PATH": "/usr/bin:/bin",
                          "FORGECREW_HOME": os.environ["FORGECREW_HOME"], **env},
                          capture_output=True, text=True, timeout=timeout, check=False)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("command", [["worker", "--specialty", "backend"], ["up", "--port", "0"]])
@pytest.mark.parametrize("env,named", [
    # FORGE named: `up` with only an Anthropic key and no forge chosen runs on the local forge (test_up.py)
    ({"FORGECREW_ANTHROPIC_API_KEY": "sk-ant-x", "FORGECREW_FORGE": "github"},
     "FORGECREW_GITHUB_TOKEN, or FORGECREW_GITHUB_APP_ID and FORGECREW_GITHUB_APP_PRIVATE_KEY, must be set"),
    ({"FORGECREW_ANTHROPIC_API_KEY": "sk-ant-x", "FORGECREW_GITHUB_APP_ID": "1"},
     "FORGECREW_GITHUB_TOKEN, or FORGECREW_GITHUB_APP_PRIVATE_KEY, must be set"),
    ({"FORGECREW_GITHUB_TOKEN": "ghp_x"}, "FORGECREW_ANTHROPIC_API_KEY must be set"),
    ({"FORGECREW_GITHUB_TOKEN": "ghp_x", "FORGECREW_ANTHROPIC_BASE_URL": "http://proxy"},
     "any value will do"),  # the SDK, and so every run, needs a key even behind a proxy
    ({"FORGECREW_FORGE": "local", "FORGECREW_ANTHROPIC_API_KEY": ""}, "FORGECREW_ANTHROPIC_API_KEY"),
])
def test_servers_that_run_agents_refuse_to_start_without_credentials(tmp_path: Path, command: list[str],
                                                                     env: dict[str, str], named: str) -> None:
    database = tmp_path / "never-made.db"
    done = forgecrew(*command, env={"FORGECREW_DATABASE_URL": f"sqlite:///{database}",
                                    "FORGECREW_WEBHOOK_SECRET": SECRET, **env})
    assert done.returncode != 0
    assert one_line(done.stderr).startswith("forgecrew: ") and named in done.stderr
    assert not database.exists()  # refused before touching anything


def test_credentials_are_enough_for_the_check(tmp_path: Path) -> None:
    """With a forge and a model configured the check passes and the next one (the database) speaks."""
    done = forgecrew("worker", "--specialty", "backend", env={
        "FORGECREW_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "FORGECREW_FORGE": "local",
        "FORGECREW_ANTHROPIC_API_KEY": "sk-ant-x", "FORGECREW_ANTHROPIC_BASE_URL": "http://127.0.0.1:1"})
    assert done.returncode != 0 and "FORGECREW_DATABASE_URL" in one_line(done.stderr)


def test_settings_require_worker_accepts_each_way_to_configure() -> None:
    Settings(github_token="ghp_x", anthropic_api_key="k").require_worker()
    Settings(github_app_id=1, github_app_private_key="pem", anthropic_api_key="k",
             anthropic_base_url="http://proxy").require_worker()
    Settings(forge="local", anthropic_api_key="k").require_worker()


@pytest.mark.parametrize("args,reason", [
    (["tasks", "list", "--state", "nosuch"], "Invalid value for '--state': 'nosuch' is not one of"),
    (["tasks", "list", "--limit", "many"], "Invalid value for '--limit'"),
    (["tasks", "show"], "Missing argument 'TASK_ID'"),
    (["no-such-command"], "No such command 'no-such-command'"),
])
def test_usage_errors_are_one_line_and_non_zero(tmp_path: Path, args: list[str], reason: str) -> None:
    done = forgecrew(*args, env={"FORGECREW_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"})
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert line.startswith("forgecrew: ") and reason in line
    assert done.stdout == ""


@pytest.mark.integration
def test_tasks_show_unknown_id_and_list_filtered_by_state(settings: Settings, db: Database) -> None:
    env = {"FORGECREW_DATABASE_URL": settings.database_url}
    failed, queued, other_failed = (make_task(db, issue_number=n) for n in (1, 2, 3))
    with db.session() as session:
        for task_id, state in ((failed, TaskState.FAILED), (queued, TaskState.QUEUED), (other_failed, TaskState.FAILED)):
            transition(session, session.get(Task, task_id), state, actor="test")
    missing = forgecrew("tasks", "show", "999", env=env)
    assert missing.returncode != 0 and one_line(missing.stderr) == "forgecrew: no task with id 999"
    listed = forgecrew("tasks", "list", "--state", "failed", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(row["id"], row["state"]) for row in rows] == [(other_failed, "failed"), (failed, "failed")]
    assert {"id", "repo", "issue_number", "specialty", "state", "branch", "pr_url", "attempt"} <= set(rows[0])
