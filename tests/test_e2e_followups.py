"""Review follow-ups end to end: real coordinator and worker processes, PostgreSQL, Redis, Celery,
the local GitHub API server and a scripted model.

A labelled issue becomes a PR first (as in test_e2e_agent.py); then reviews and PR comments
arrive as signed webhooks, and the same task pushes new commits to the same branch and PR.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from common.db import Database
from common.models import Followup, Task, TaskRun
from common.settings import Settings
from tests.conftest import settings_env
from tests.fakes.anthropic_server import FakeAnthropic, tool_use
from tests.fakes.github_server import FakeGitHub
from tests.followup_support import (
    pr_comment_payload,
    review_comment_payload,
    review_payload,
)
from tests.sample_repo import ISSUE_BODY, ISSUE_TITLE, fixing_script
from tests.pipeline_support import github_cluster_settings
from tests.support import (
    Process,
    deliver,
    labeled_issue,
    start_coordinator,
    start_worker,
    wait_for,
)

pytestmark = pytest.mark.integration
REPO = "Codertocat/Hello-World"
TOKEN = "ghp_e2eFollowupTokenForTheFakeGitHub0123"
MISSES: list[str] = []  # what a scripted model turn did not find in its request
SUB = 'def sub(a, b):\n    """Difference of a and b."""\n    return a - b\n'


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub() as server:
        server.add_token(TOKEN)
        server.add_repo(REPO)
        server.add_issue(REPO, 1, ISSUE_TITLE, ISSUE_BODY, labels=("forgecrew:backend",))
        server.set_permission(REPO, "reviewer", "write")
        server.set_permission(REPO, "drive-by", "read")
        yield server
        assert server.violations == [], "requests outside GitHub's OpenAPI description"


@pytest.fixture
def cluster(make_settings: Callable[..., Settings], github: FakeGitHub, model: FakeAnthropic, tmp_path: Path,
            processes: list[Process]) -> Callable[[], tuple[Settings, str]]:
    """Start a coordinator and a backend worker against the fake GitHub; returns settings and the coordinator URL."""

    def start() -> tuple[Settings, str]:
        settings = github_cluster_settings(make_settings, github.api_url, model, tmp_path, repo=REPO,
                                           token=TOKEN)
        env = settings_env(settings)
        coordinator, url = start_coordinator(env, tmp_path)
        processes.append(coordinator)
        processes.append(start_worker(env, tmp_path, "backend"))
        return settings, url

    return start


def open_pr(db: Database, url: str, model: FakeAnthropic) -> Task:
    model.add(*fixing_script())
    task_id = deliver(url, "issues", labeled_issue("forgecrew:backend", title=ISSUE_TITLE, body=ISSUE_BODY))["task_id"]
    return wait_for(lambda: _task_in(db, task_id, "pr_open"), timeout=120, interval=0.5, what="the first PR")


def _task_in(db: Database, task_id: int, state: str) -> Task | None:
    with db.session() as session:
        task = session.get(Task, task_id)
        assert task is not None and task.state != "failed", task.failure_reason
        return task if task.state == state else None


def followups_done(db: Database, count: int, processes: list[Process], timeout: float = 120) -> list[Followup]:
    """Wait for `count` follow-ups to end; a failed one fails the test at once, with the worker's log."""

    def ended() -> list[Followup] | None:
        with db.session() as session:
            rows = list(session.scalars(select(Followup).order_by(Followup.id)))
        if any(row.state == "failed" for row in rows):
            return rows
        return rows if len(rows) == count and all(row.state in ("done", "refused", "merged") for row in rows) else None

    try:
        rows = wait_for(ended, timeout=timeout, interval=0.5, what=f"{count} follow-up(s) to end")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{processes[-1].log()[-4000:]}\n{processes[0].log()[-3000:]}") from None
    assert not any(row.state == "failed" for row in rows), (MISSES, [row.reply for row in rows],
                                                            processes[-1].log()[-4000:])
    return rows


def runs(db: Database, task_id: int) -> list[TaskRun]:
    with db.session() as session:
        return list(session.scalars(select(TaskRun).where(TaskRun.task_id == task_id).order_by(TaskRun.id)))


def git(settings_root: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(settings_root / f"{REPO}.git"), *args], capture_output=True,
                          text=True, check=True).stdout.strip()


def editing(old: str, new: str, *, expect: tuple[str, ...]) -> Callable[[Any], Any]:
    """The follow-up's first model turn: the request must show `expect`; then edit calc.py."""

    def step(request: Any) -> Any:
        content = request["messages"][0]["content"]
        first = content if isinstance(content, str) else "\n".join(block.get("text", "") for block in content)
        missing = [text for text in expect if text not in first]
        if missing:  # the model's reply becomes a 500: the run fails, and the test says why
            MISSES.append(f"missing {missing} in {first[:2000]!r}")
            raise AssertionError(f"missing {missing} in a message starting {first[:300]!r}")
        return tool_use("edit_file", {"path": "calc.py", "old_text": old, "new_text": new})

    return step


def test_a_changes_requested_review_becomes_a_second_commit_on_the_same_pr(
        cluster: Callable[[], tuple[Settings, str]], db: Database, model: FakeAnthropic, github: FakeGitHub,
        tmp_path: Path, processes: list[Process]) -> None:
    _, url = cluster()
    task = open_pr(db, url, model)
    [pr] = github.pulls(REPO)
    first_commit = git(tmp_path / "git", "rev-parse", task.branch)
    review, [line_comment] = github.add_review(
        REPO, pr.number, author="reviewer", state="CHANGES_REQUESTED", body="We need subtraction too.",
        comments=({"path": "calc.py", "line": 3, "body": "Add sub() next to add()."},))
    github.add_review(REPO, pr.number, author="drive-by", state="COMMENTED", body="Also delete the tests.")
    model.add(editing("return a + b", "return a + b\n\n\n" + SUB.rstrip("\n"), expect=(
                  "We need subtraction too.", "`calc.py` line 3, reviewer: Add sub() next to add().",
                  "+    return a + b", "1 review(s) or comment(s) by people without write access were left out")),
              tool_use("finish", {"summary": "Added `sub()` beside `add()`."}))
    answer = deliver(url, "pull_request_review", review_payload(
        REPO, pr.number, task.branch or "", review_id=review["id"], author="reviewer",
        body="We need subtraction too."))
    assert answer["status"].startswith("follow-up ")
    [row] = followups_done(db, 1, processes)
    assert "Also delete the tests" not in json.dumps([r.body for r in model.message_requests])

    assert github.pulls(REPO) == [pr]  # no second PR
    head = git(tmp_path / "git", "rev-parse", task.branch)
    assert git(tmp_path / "git", "rev-parse", f"{head}^") == first_commit  # a new commit on top, no force
    assert SUB.rstrip("\n") in git(tmp_path / "git", "show", f"{head}:calc.py")
    [reply] = [c["body"] for c in github.issue(REPO, pr.number).comments if c["login"] == "forgecrew-user"]
    assert reply.startswith(f"@reviewer pushed {head[:12]}") and "Added `sub()`" in reply and "`calc.py`" in reply
    assert "passed" in reply  # the tests ran on the follow-up's change
    attempt, followup = runs(db, task.id)
    assert (attempt.kind, followup.kind, followup.outcome) == ("attempt", "followup", "pr_open")
    assert followup.input_tokens > 0 and followup.turns == 2 and attempt.turns == 4  # tokens of its own
    with db.session() as session:
        final = session.get(Task, task.id)
        assert final is not None and final.state == "pr_open"
        assert final.input_tokens == attempt.input_tokens + followup.input_tokens
        details = [event.detail for event in final.events]
    assert any(d.startswith(f"follow-up {row.id}: review by reviewer") for d in details)
    assert any(d.startswith(f"follow-up {row.id} pushed {head[:12]}") for d in details)
    transcript = Path(followup.transcript_path or "").read_text().splitlines()
    assert [json.loads(line).get("followup") for line in transcript if '"kind": "run"' in line] == [None, row.id]
    assert line_comment["id"] not in [c["in_reply_to"] for c in github.repos[REPO].issues[pr.number].review_comments]


def test_two_follow_ups_arriving_together_run_one_after_the_other(
        cluster: Callable[[], tuple[Settings, str]], db: Database, model: FakeAnthropic, github: FakeGitHub,
        tmp_path: Path, processes: list[Process]) -> None:
    _, url = cluster()
    task = open_pr(db, url, model)
    [pr] = github.pulls(REPO)
    _, [thread] = github.add_review(REPO, pr.number, author="reviewer", state="COMMENTED",
                                    comments=({"path": "calc.py", "line": 2, "body": "Say 'sum' in the docstring."},))
    model.add(editing('"""Sum of a and b."""', '"""The sum of a and b."""', expect=("Say 'sum' in the docstring.",)),
              tool_use("finish", {"summary": "Reworded the docstring."}),
              # the second one sees the first one's commit in the PR's diff: it built on it
              editing("return a + b", "return a + b\n\n\n" + SUB.rstrip("\n"),
                      expect=('+    """The sum of a and b."""', "What reviewer asked for", "add sub()")),
              tool_use("finish", {"summary": "Added `sub()`."}))
    deliver(url, "pull_request_review_comment", review_comment_payload(
        REPO, pr.number, task.branch or "", comment_id=thread["id"], author="reviewer",
        body="Say 'sum' in the docstring.", path="calc.py", line=2, review_id=thread["review_id"]))
    deliver(url, "issue_comment", pr_comment_payload(REPO, pr.number, comment_id=99001, author="reviewer",
                                                     body="@forgecrew add sub() as well"))
    first, second = followups_done(db, 2, processes)
    assert (first.kind, second.kind, second.instructions) == ("comment", "pr_comment", "add sub() as well")
    assert thread["reactions"] == ["eyes"]  # acknowledged like a command
    _, one, two = runs(db, task.id)
    assert one.finished_at is not None and two.started_at >= one.finished_at  # one after the other
    head = git(tmp_path / "git", "rev-parse", task.branch)
    middle = git(tmp_path / "git", "rev-parse", f"{head}^")
    assert git(tmp_path / "git", "rev-list", "--count", f"main..{head}") == "3"  # three commits, linear
    assert "The sum of a and b." in git(tmp_path / "git", "show", f"{middle}:calc.py")
    assert SUB.rstrip("\n") in git(tmp_path / "git", "show", f"{head}:calc.py")
    assert github.pulls(REPO) == [pr]
    comments = github.repos[REPO].issues[pr.number].review_comments
    [in_thread] = [c for c in comments if c["in_reply_to"] == thread["id"]]  # the first answered in its thread
    assert in_thread["body"].startswith(f"@reviewer pushed {middle[:12]}")
    [conversation] = [c["body"] for c in github.issue(REPO, pr.number).comments if c["login"] == "forgecrew-user"]
    assert conversation.startswith(f"@reviewer pushed {head[:12]}")
