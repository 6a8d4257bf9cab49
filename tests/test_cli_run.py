"""`forgecrew run` on a local repository, as the README shows, against a fake model server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.anthropic_server import DEFAULT_KEY, FakeAnthropic
from tests.sample_repo import fixing_script, write_sample


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A short folder: HOME is the test's folder, and $HOME/.local/share/forgecrew/broker/broker.sock must
    fit a unix socket's 107 bytes even under pytest-xdist's longer base folders."""
    folder = Path(tempfile.mkdtemp(prefix="fcrun-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    repo = write_sample(tmp_path / "calc")
    git("init", "--quiet", "--initial-branch=main", cwd=repo)
    git("add", ".", cwd=repo)
    git("-c", "user.name=dev", "-c", "user.email=dev@example.com", "commit", "--quiet", "-m", "calc", cwd=repo)
    return repo


CHECKOUT = Path(__file__).resolve().parents[1]


def forgecrew(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH: run this checkout's code even where another copy is the installed one
    base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(cwd), "PYTHONPATH": str(CHECKOUT)}
    return subprocess.run([sys.executable, "-m", "coordinator.cli", *args], cwd=cwd, env={**base, **env},
                          capture_output=True, text=True, timeout=180)


def test_run_on_a_local_repository_opens_a_local_pr(project: Path, tmp_path: Path) -> None:
    with FakeAnthropic(fixing_script()) as model:
        done = forgecrew(["run", "--repo", str(project), "--title", "add() subtracts", "--body", "see calc.py"],
                         cwd=tmp_path, FORGECREW_ANTHROPIC_API_KEY=DEFAULT_KEY,
                         FORGECREW_ANTHROPIC_BASE_URL=model.base_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tests: `python3 -m unittest" in done.stdout and "passed" in done.stdout
    assert "pull request: local://local/calc/pull/1" in done.stdout
    fetch = next(line for line in done.stdout.splitlines() if line.startswith("see the change: "))
    diff = subprocess.run(fetch.removeprefix("see the change: "), shell=True, capture_output=True, text=True)
    assert "+    return a + b" in diff.stdout, diff.stderr
    state = tmp_path / ".local" / "share" / "forgecrew"  # the default FORGECREW_HOME of this $HOME, not the cwd
    bare = state / "forge" / "local" / "calc.git"
    branches = git("--git-dir", str(bare), "branch", "--list", "forgecrew/*", cwd=tmp_path)
    assert "forgecrew/run-1-add-subtracts" in branches
    [listed] = json.loads(forgecrew(["tasks", "list", "--json"], cwd=tmp_path).stdout)
    assert {k: listed[k] for k in ("id", "repo", "issue_number", "specialty", "state", "attempt")} == {
        "id": 1, "repo": "local/calc", "issue_number": None, "specialty": "backend", "state": "pr_open", "attempt": 1}
    assert listed["branch"].startswith("forgecrew/run-1-") and listed["pr_url"] == "local://local/calc/pull/1"
    shown = json.loads(forgecrew(["tasks", "show", "1", "--json"], cwd=tmp_path).stdout)
    assert [e["to_state"] for e in shown["events"]][-3:] == ["running", "testing", "pr_open"]
    assert all({"from_state", "to_state", "actor", "detail", "at"} <= set(e) for e in shown["events"])
    assert shown["usage"]["input_tokens"] > 0 and shown["usage"]["cache_read_tokens"] > 0
    assert shown["runs"][0]["tests_passed"] is True
    workspace = state / "workspaces" / "tasks" / "1"
    assert not (tmp_path / "forge").exists() and not (tmp_path / "forgecrew.db").exists()
    assert (workspace / "transcript.jsonl").is_file()
    gc = forgecrew(["workspaces", "gc", "--days", "0"], cwd=tmp_path)
    assert gc.returncode == 0 and "1 workspace(s) removed" in gc.stdout
    assert not workspace.exists()


def test_run_without_api_key_fails_with_one_line(project: Path, tmp_path: Path) -> None:
    done = forgecrew(["run", "--repo", str(project), "--title", "x"], cwd=tmp_path)
    assert done.returncode != 0
    assert done.stderr.strip() == ("forgecrew: FORGECREW_ANTHROPIC_API_KEY must be set: "
                                   "the agent calls the Anthropic Messages API")


def test_run_needs_an_issue_or_a_title(project: Path, tmp_path: Path) -> None:
    done = forgecrew(["run", "--repo", str(project)], cwd=tmp_path, FORGECREW_ANTHROPIC_API_KEY=DEFAULT_KEY)
    assert done.returncode == 2 and "give --issue N, or --title" in done.stderr


def test_an_issue_number_on_a_local_repository_is_refused(project: Path, tmp_path: Path) -> None:
    done = forgecrew(["run", "--repo", str(project), "--issue", "3"], cwd=tmp_path,
                     FORGECREW_ANTHROPIC_API_KEY=DEFAULT_KEY)
    assert done.returncode == 2 and "has no issues: describe the work with --title" in done.stderr


def test_model_error_exits_nonzero_with_reason(project: Path, tmp_path: Path) -> None:
    from tests.fakes.anthropic_server import error

    with FakeAnthropic([error(401, "authentication_error", "invalid x-api-key")]) as model:
        done = forgecrew(["run", "--repo", str(project), "--title", "fix add"], cwd=tmp_path,
                         FORGECREW_ANTHROPIC_API_KEY=DEFAULT_KEY, FORGECREW_ANTHROPIC_BASE_URL=model.base_url)
    assert done.returncode == 1
    assert "failed: model error" in done.stderr and DEFAULT_KEY not in done.stderr + done.stdout


def test_help_names_the_limits_of_a_run(tmp_path: Path) -> None:
    done = forgecrew(["run", "--help"], cwd=tmp_path)
    assert done.returncode == 0
    assert "FORGECREW_MAX_WALL_SECONDS" in done.stdout and "command_timeout_seconds" in done.stdout


def test_wall_time_budget_ends_a_run_even_inside_a_long_command(project: Path, tmp_path: Path) -> None:
    import time

    from tests.fakes.anthropic_server import tool_use

    started = time.monotonic()
    with FakeAnthropic([tool_use("run_command", {"command": "sleep 90"})]) as model:
        done = forgecrew(["run", "--repo", str(project), "--title", "fix add"], cwd=tmp_path,
                         FORGECREW_ANTHROPIC_API_KEY=DEFAULT_KEY, FORGECREW_ANTHROPIC_BASE_URL=model.base_url,
                         FORGECREW_MAX_WALL_SECONDS="3")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "time budget exhausted" in done.stderr and "FORGECREW_MAX_WALL_SECONDS=3" in done.stderr
    assert time.monotonic() - started < 45  # the command was stopped at the budget, not after 90 s
