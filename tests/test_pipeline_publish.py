"""Publishing from the pipeline: fenced by the lease, best-effort once the PR exists, drafts made ready."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from common.db import Database
from common.forge.factory import make_forge
from common.forge.local import LocalForge
from common.models import Task
from common.settings import Settings
from common.states import TaskState
from common.transitions import transition
from tests.factories import make_task
from tests.fakes.anthropic_server import FakeAnthropic, tool_use
from tests.fakes.github_server import FakeGitHub
from tests.pipeline_support import REPO, load, run_task
from tests.sample_repo import ISSUE_BODY, ISSUE_TITLE, fixing_script, write_sample

pytestmark = pytest.mark.integration
TOKEN = "ghp_publishTestTokenForTheFakeGitHub0123"
WRONG_FIX = tool_use("edit_file", {"path": "calc.py", "old_text": "return a - b", "new_text": "return b - a"})


def _take_over(db: Database, task_id: int, reply: Any) -> Callable[[dict[str, Any]], Any]:
    """A model turn during which another worker takes the task over (a new fencing token)."""

    def turn(request: dict[str, Any]) -> Any:
        with db.session() as session:
            session.get(Task, task_id).lease_token += 1
        return reply

    return turn


def _branches(bare: Path) -> str:
    return subprocess.run(["git", "--git-dir", str(bare), "branch", "--list", "forgecrew/*"],
                          capture_output=True, text=True, check=True).stdout.strip()


def _requeue(db: Database, task_id: int) -> None:
    with db.session() as session:
        transition(session, session.get(Task, task_id), TaskState.QUEUED, actor="test", detail="retry")


def test_lease_taken_over_mid_run_neither_pushes_nor_opens_a_pr(forge_settings: Settings, db: Database,
                                                               model: FakeAnthropic, tmp_path: Path) -> None:
    source = tmp_path / "notes"
    source.mkdir()
    (source / "notes.txt").write_text("hello\n")  # nothing here for detect_test_command: no test run
    forge = LocalForge(forge_settings)
    bare = forge.create_repo("acme/notes", source)
    forge.create_issue("acme/notes", 1, "Say goodbye", "notes.txt should say goodbye")
    task_id = make_task(db, repo="acme/notes", issue_number=1, title="Say goodbye")
    model.add(tool_use("write_file", {"path": "notes.txt", "content": "goodbye\n"}),
              _take_over(db, task_id, tool_use("finish", {"summary": "Says goodbye."})))
    outcome = run_task(forge_settings, db, forge, task_id)
    assert outcome.state == "lease_lost", outcome.reason
    assert _branches(bare) == "" and forge.pull_requests("acme/notes") == []
    assert not any("pull request" in c["body"] for c in forge.issue_record("acme/notes", 1)["comments"])
    task = load(db, task_id)
    assert task.state == "running" and task.pr_url is None  # left to the new holder


def test_lease_taken_over_before_the_tests_runs_no_tests(forge_settings: Settings, db: Database,
                                                         model: FakeAnthropic, tmp_path: Path) -> None:
    source = write_sample(tmp_path / "sample")
    (source / ".forgecrew.yml").write_text("test_command: touch ../tests-ran && python3 -m unittest\n")
    forge = LocalForge(forge_settings)
    bare = forge.create_repo(REPO, source)
    task_id = make_task(db, repo=REPO, issue_number=None, title=ISSUE_TITLE)
    read, fix, _, finish = fixing_script()  # the take-over comes with finish, instead of a test run
    model.add(read, fix, _take_over(db, task_id, finish))
    outcome = run_task(forge_settings, db, forge, task_id)
    assert outcome.state == "lease_lost", outcome.reason
    assert not (forge_settings.workspace_root / "tasks" / str(task_id) / "tests-ran").exists()
    assert _branches(bare) == ""


def test_draft_with_failing_tests_says_what_to_do(forge_settings: Settings, db: Database, forge: LocalForge,
                                                  model: FakeAnthropic) -> None:
    settings = forge_settings.model_copy(update={"repair_rounds": 0})
    model.add(WRONG_FIX, tool_use("finish", {"summary": "swapped"}))
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE)
    lines: list[str] = []
    outcome = run_task(settings, db, forge, task_id, progress=lines.append)
    assert outcome.state == "pr_open"
    task = load(db, task_id)
    comment = forge.issue_record(REPO, 1)["comments"][-1]["body"]
    for text in (comment, task.events[-1].detail, task.runs[0].detail, "\n".join(lines)):
        assert "tests" in text and "fail" in text and "`forgecrew` label" in text and "push a fix" in text, text
    assert task.branch in comment and "forgecrew:tests-failing" in comment


def test_retry_whose_tests_pass_makes_the_draft_ready_on_the_local_forge(
        forge_settings: Settings, db: Database, forge: LocalForge, model: FakeAnthropic) -> None:
    settings = forge_settings.model_copy(update={"repair_rounds": 0})
    model.add(WRONG_FIX, tool_use("finish", {"summary": "swapped"}), *fixing_script())
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE)
    assert run_task(settings, db, forge, task_id).state == "pr_open"
    [pr] = forge.pull_requests(REPO)
    assert pr["draft"] and pr["labels"] == ["forgecrew:tests-failing"]
    _requeue(db, task_id)
    second = run_task(settings, db, forge, task_id)
    assert second.state == "pr_open" and second.pr is not None and not second.pr.draft
    [pr] = forge.pull_requests(REPO)
    assert not pr["draft"] and pr["labels"] == []
    assert "tests pass" in load(db, task_id).events[-1].detail


@pytest.fixture
def github(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[tuple[FakeGitHub, Path]]:
    """A fake GitHub holding the sample issue; git itself goes to a bare repository on disk."""
    git_root = tmp_path / "git"
    LocalForge(make_settings(local_forge_root=git_root)).create_repo(REPO, write_sample(tmp_path / "sample"))
    with FakeGitHub() as fake:
        fake.add_token(TOKEN)
        fake.add_repo(REPO)
        fake.add_issue(REPO, 1, ISSUE_TITLE, ISSUE_BODY)
        yield fake, git_root
        assert fake.violations == []


@pytest.fixture
def github_settings(forge_settings: Settings, github: tuple[FakeGitHub, Path]) -> Settings:
    fake, git_root = github
    return forge_settings.model_copy(update={
        "forge": "github", "github_token": SecretStr(TOKEN), "github_api_url": fake.api_url, "repair_rounds": 0,
        "clone_url_template": f"file://{git_root}/{{full_name}}.git", "github_write_interval_seconds": 0})


def test_label_failure_after_the_pr_exists_does_not_fail_the_task(github_settings: Settings, db: Database,
                                                                  github: tuple[FakeGitHub, Path],
                                                                  model: FakeAnthropic) -> None:
    fake, _ = github
    fake.fail_next("POST", r"/issues/2/labels$", 403, body={
        "message": "Resource not accessible by integration", "documentation_url": "https://docs.github.com"})
    model.add(WRONG_FIX, tool_use("finish", {"summary": "swapped"}))
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE)
    outcome = run_task(github_settings, db, make_forge(github_settings), task_id)
    assert outcome.state == "pr_open", outcome.reason
    [pr] = fake.pulls(REPO)
    assert pr.draft and pr.number == 2 and "forgecrew:tests-failing" not in pr.labels
    task = load(db, task_id)
    assert task.state == "pr_open" and task.pr_number == 2 and task.lease_owner is None
    detail = task.events[-1].detail
    assert "could not add the forgecrew:tests-failing label" in detail and "Resource not accessible" in detail
    comments = [c["body"] for c in fake.issue(REPO, 1).comments]
    assert any("pull request open" in body and "(opened)" in body for body in comments)
    assert not any("could not finish" in body for body in comments)
    assert "forgecrew:pr-open" in fake.issue(REPO, 1).labels


def test_the_task_records_its_pr_before_the_issue_hears_of_it(github_settings: Settings, db: Database,
                                                               github: tuple[FakeGitHub, Path],
                                                               model: FakeAnthropic) -> None:
    fake, _ = github
    seen_states: list[str] = []
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE)

    def comment_refused(*_: object) -> None:  # called when the comment arrives at GitHub
        seen_states.append(load(db, task_id).state)

    # the progress comment is posted when the run starts; only its last edit announces the PR
    settings = github_settings.model_copy(update={"progress_edit_interval_seconds": 3600.0})
    fake.fail_next("PATCH", r"/issues/comments/\d+$", 403, body={"message": "Comments are locked"},
                   before=comment_refused)
    model.add(*fixing_script())
    outcome = run_task(settings, db, make_forge(settings), task_id)
    assert outcome.state == "pr_open" and seen_states == ["pr_open"]
    task = load(db, task_id)
    assert task.runs[-1].outcome == "pr_open" and "Comments are locked" in task.runs[-1].detail
    [status] = [c for c in fake.issue(REPO, 1).comments if c["body"].startswith("<!-- forgecrew:progress -->")]
    assert "task" in status["body"] and "working" in status["body"]  # the edit that failed left it as it was


def test_retry_whose_tests_pass_makes_the_draft_ready_on_github(github_settings: Settings, db: Database,
                                                                github: tuple[FakeGitHub, Path],
                                                                model: FakeAnthropic) -> None:
    fake, _ = github
    model.add(WRONG_FIX, tool_use("finish", {"summary": "swapped"}), *fixing_script())
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE)
    assert run_task(github_settings, db, make_forge(github_settings), task_id).state == "pr_open"
    [pr] = fake.pulls(REPO)
    assert pr.draft and pr.labels == ["forgecrew:tests-failing"]
    _requeue(db, task_id)
    second = run_task(github_settings, db, make_forge(github_settings), task_id)
    assert second.state == "pr_open" and second.pr is not None and not second.pr.created
    [pr] = fake.pulls(REPO)
    assert not pr.draft and pr.labels == []
    assert len(fake.calls("POST", r"^/graphql$")) == 1
    # one progress comment for the task, posted by the first run and edited by the second
    [status] = [c for c in fake.issue(REPO, 1).comments if c["body"].startswith("<!-- forgecrew:progress -->")]
    assert "attempt 2" in status["body"] and "(updated)" in status["body"] and status.get("edits", 0) >= 2
