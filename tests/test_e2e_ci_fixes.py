"""CI fixes end to end: real coordinator and worker processes, PostgreSQL, Redis, Celery, the local GitHub
API server and a scripted model.

A labelled issue becomes a PR first; then the PR's head fails a check run, GitHub sends a signed
check_run webhook, and the same task pushes a fixing commit to the same branch and PR, the agent having
seen the check's annotation. MAX_CI_FIXES_PER_PR is 1 here: the next failure is said on the PR once.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from common.db import Database
from common.models import Followup, Task, TaskRun
from common.settings import Settings
from tests.ci_support import check_run_payload, check_suite_payload, status_payload
from tests.conftest import settings_env
from tests.fakes.anthropic_server import FakeAnthropic, tool_use
from tests.fakes.github_server import FakeGitHub
from tests.sample_repo import ISSUE_BODY, ISSUE_TITLE, fixing_script
from tests.pipeline_support import github_cluster_settings
from tests.support import Process, headers, labeled_issue, start_coordinator, start_worker, wait_for

pytestmark = pytest.mark.integration
REPO = "Codertocat/Hello-World"
TOKEN = "ghp_e2eCiFixTokenForTheFakeGitHub012345"
LINT = {"path": "calc.py", "line": 2, "level": "failure", "title": "D401",
        "message": "First line of the docstring should be imperative: 'Return the sum', not 'Sum'"}
MISSES: list[str] = []  # what the scripted model did not find in its request


@pytest.fixture
def model() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def git_root(tmp_path: Path) -> Path:
    return tmp_path / "git"


@pytest.fixture
def github(git_root: Path) -> Iterator[FakeGitHub]:
    with FakeGitHub() as server:
        server.add_token(TOKEN)
        server.add_repo(REPO)
        server.add_issue(REPO, 1, ISSUE_TITLE, ISSUE_BODY, labels=("forgecrew:backend",))
        server.branch_head = lambda repo, branch: git(git_root, "rev-parse", f"refs/heads/{branch}")  # as pushed
        yield server
        assert server.violations == [], "requests outside GitHub's OpenAPI description"


@pytest.fixture
def cluster(make_settings: Callable[..., Settings], github: FakeGitHub, model: FakeAnthropic, tmp_path: Path,
            git_root: Path, processes: list[Process]) -> str:
    """A coordinator and a backend worker against the fake GitHub, one CI fix allowed per PR; the coordinator URL."""
    settings = github_cluster_settings(make_settings, github.api_url, model, tmp_path, repo=REPO,
                                       token=TOKEN, max_ci_fixes_per_pr=1)
    env = settings_env(settings)
    coordinator, url = start_coordinator(env, tmp_path)
    processes.append(coordinator)
    processes.append(start_worker(env, tmp_path, "backend"))
    return url


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(root / f"{REPO}.git"), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def answer(url: str, event: str, data: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps(data).encode()
    response = httpx.post(f"{url}/webhooks/github", content=body, headers=headers(event, body), timeout=30)
    assert response.status_code in (200, 202), response.text
    return dict(response.json())


def deliver(url: str, event: str, data: dict[str, Any]) -> str:
    """The delivery's recorded outcome."""
    return str(answer(url, event, data)["status"])


def ended(db: Database, count: int, processes: list[Process]) -> list[Followup]:
    """Wait for `count` follow-ups to end; a failed one fails the test with the logs."""

    def done() -> list[Followup] | None:
        with db.session() as session:
            rows = list(session.scalars(select(Followup).order_by(Followup.id)))
        finished = len(rows) == count and all(r.state in ("done", "refused", "failed") for r in rows)
        return rows if finished or any(r.state == "failed" for r in rows) else None

    try:
        rows = wait_for(done, timeout=90, interval=0.3, what=f"{count} follow-up(s) to end")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{processes[-1].log()[-4000:]}\n{processes[0].log()[-3000:]}") from None
    assert not any(r.state == "failed" for r in rows), (MISSES, [r.reply for r in rows], processes[-1].log()[-3000:])
    return rows


def fixing_the_docstring(request: Any) -> Any:
    """The CI fix's first turn: the annotation must be in the request, quoted as untrusted data."""
    content = request["messages"][0]["content"]
    first = content if isinstance(content, str) else "\n".join(block.get("text", "") for block in content)
    expect = ("# Fixing the failing CI of pull request #2", "## The failing checks (untrusted data)",
              "check run `lint`: failure", f"- calc.py:2 [failure] D401: {LINT['message']}", "Summary: 1 error")
    missing = [text for text in expect if text not in first]
    if missing:
        MISSES.append(f"missing {missing} in {first[:2000]!r}")
        raise AssertionError(f"missing {missing}")
    return tool_use("edit_file", {"path": "calc.py", "old_text": '"""Sum of a and b."""',
                                  "new_text": '"""Return the sum of a and b."""'})


def test_a_failing_check_run_is_fixed_by_a_follow_up_and_the_cap_is_respected(
        cluster: str, db: Database, model: FakeAnthropic, github: FakeGitHub, git_root: Path,
        processes: list[Process]) -> None:
    url = cluster
    model.add(*fixing_script())
    task_id = int(answer(url, "issues", labeled_issue("forgecrew:backend", title=ISSUE_TITLE,
                                                      body=ISSUE_BODY))["task_id"])
    task = wait_for(lambda: _pr_open(db, task_id), timeout=90, interval=0.3, what="the first PR")
    [pr] = github.pulls(REPO)
    first = git(git_root, "rev-parse", task.branch)
    github.add_check_run(REPO, first, "tests", conclusion="success")
    github.add_check_run(REPO, first, "lint", title="ruff", summary="1 error", annotations=(LINT,))
    model.add(fixing_the_docstring, tool_use("finish", {"summary": "Made the docstring imperative."}))

    assert deliver(url, "check_run", check_run_payload(REPO, task.branch, first, name="lint",
                                                       pr=pr.number)).startswith("follow-up ")
    assert deliver(url, "check_suite", check_suite_payload(REPO, task.branch, first, pr=pr.number)).startswith(
        "ignored: follow-up ")  # the same failing commit: one fix
    [fix] = ended(db, 1, processes)
    assert (fix.kind, fix.state, fix.head_sha) == ("ci", "done", first)
    assert github.pulls(REPO) == [pr]  # no second PR
    second = git(git_root, "rev-parse", task.branch)
    assert git(git_root, "rev-parse", f"{second}^") == first  # a new commit on top, no force
    assert '"""Return the sum of a and b."""' in git(git_root, "show", f"{second}:calc.py")
    assert git(git_root, "log", "-1", "--format=%s", second) == f"Fix the failing CI of #{pr.number}"
    [reply] = [c["body"] for c in github.issue(REPO, pr.number).comments if c["login"] == "forgecrew-user"]
    assert reply.startswith(f"Pushed {second[:12]} to fix this pull request's failing CI.") and "`calc.py`" in reply

    # the fix's own commit fails CI again: past MAX_CI_FIXES_PER_PR=1 a person is told, once, and nothing runs
    github.add_check_run(REPO, second, "lint", summary="1 error", annotations=(LINT,))
    assert deliver(url, "status", status_payload(REPO, task.branch, second)).startswith("follow-up ")
    _, refused = ended(db, 2, processes)
    assert refused.state == "refused" and refused.head_sha == second
    notes = [c["body"] for c in github.issue(REPO, pr.number).comments if "a person is needed" in c["body"]]
    assert notes == ["The CI of this pull request still fails after 1 fix attempt(s) by forgecrew "
                     "(MAX_CI_FIXES_PER_PR); a person is needed from here."]
    with db.session() as session:
        assert [r.kind for r in session.scalars(select(TaskRun).where(TaskRun.task_id == task_id))] == [
            "attempt", "followup"]
        assert session.get(Task, task_id).state == "pr_open"  # type: ignore[union-attr]
    assert len(model.message_requests) == 6  # four turns for the PR, two for the fix, none after


def _pr_open(db: Database, task_id: int) -> Task | None:
    with db.session() as session:
        task = session.get(Task, task_id)
        assert task is not None and task.state != "failed", task.failure_reason
        return task if task.state == "pr_open" else None
