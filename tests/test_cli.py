"""The `forgecrew` command as a user runs it: exit status and one-line reasons on stderr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.settings import Settings
from tests.support import SECRET


def forgecrew(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordinator.cli", *args], env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=timeout)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("command", [["worker", "--specialty", "backend"], ["up", "--port", "0"]])
@pytest.mark.parametrize("env,named", [
    ({"FORGECREW_ANTHROPIC_API_KEY": "sk-ant-x"}, "FORGECREW_GITHUB_TOKEN, or FORGECREW_GITHUB_APP_ID and "
                                                   "FORGECREW_GITHUB_APP_PRIVATE_KEY, must be set"),
    ({"FORGECREW_ANTHROPIC_API_KEY": "sk-ant-x", "FORGECREW_GITHUB_APP_ID": "1"},
     "FORGECREW_GITHUB_TOKEN, or FORGECREW_GITHUB_APP_PRIVATE_KEY, must be set"),
    ({"FORGECREW_GITHUB_TOKEN": "ghp_x"}, "FORGECREW_ANTHROPIC_API_KEY (or FORGECREW_ANTHROPIC_BASE_URL"),
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
        "FORGECREW_ANTHROPIC_BASE_URL": "http://127.0.0.1:1"})
    assert done.returncode != 0 and "FORGECREW_DATABASE_URL" in one_line(done.stderr)


def test_settings_require_worker_accepts_each_way_to_configure() -> None:
    Settings(github_token="ghp_x", anthropic_api_key="k").require_worker()
    Settings(github_app_id=1, github_app_private_key="pem", anthropic_base_url="http://proxy").require_worker()
    Settings(forge="local", anthropic_api_key="k").require_worker()
