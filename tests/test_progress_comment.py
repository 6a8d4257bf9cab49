"""The progress comment: one per task, edited in place, spaced in time, and never losing the last state."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from common.db import Database
from common.forge.base import Forge
from common.forge.github import GitHubForge
from common.forge.local import LocalForge
from common.models import Task
from common.redact import Redactor
from common.settings import Settings
from tests.factories import make_task
from tests.fakes.github_server import FakeGitHub
from workers.llm import Usage
from workers.progress_comment import MARKER, ProgressComment

pytestmark = pytest.mark.integration
REPO = "acme/app"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def forge(settings: Settings) -> LocalForge:
    return LocalForge(settings)


def progress(settings: Settings, db: Database, forge: Forge, clock: Clock,
             comment_id: int | None = None) -> ProgressComment:
    task_id = make_task(db, repo=REPO, issue_number=3)
    return ProgressComment(forge, Redactor.from_settings(settings), db, task_id=task_id, repo=REPO, number=3,
                           comment_id=comment_id, interval=10.0, clock=clock)


def statuses(forge: LocalForge) -> list[dict]:
    return [c for c in forge.issue_record(REPO, 3)["comments"] if c["body"].startswith(MARKER)]


@pytest.fixture
def seeded(forge: LocalForge, sample_repo_forge: None) -> LocalForge:
    forge.create_issue(REPO, 3, "Crash", "it crashes")
    return forge


@pytest.fixture
def sample_repo_forge(settings: Settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A bare repository on the local forge, so issues can be recorded for it."""
    import subprocess

    bare = settings.local_forge_root / f"{REPO}.git"
    bare.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)


def test_edits_are_spaced_and_the_final_state_is_always_written(settings: Settings, db: Database,
                                                                seeded: LocalForge) -> None:
    clock = Clock()
    comment = progress(settings, db, seeded, clock)
    assert comment.update(state="running", specialty="backend", attempt=1) is None
    assert comment.update(state="running", turns=3) is None  # within the interval: held
    [status] = statuses(seeded)
    assert "turns" not in status["body"] and comment.pending
    clock.now += 11
    comment.update(state="running", turns=5)
    [status] = statuses(seeded)
    assert "5 model turns so far" in status["body"] and not comment.pending
    comment.update(final=True, state="pr_open", pr="local://acme/app/pull/4 (opened)", tests="3 passed",
                   usage=Usage(1200, 300, 5000, 0), cost=0.0123)  # inside the interval, but final
    [status] = statuses(seeded)
    assert "pull request open" in status["body"] and "local://acme/app/pull/4" in status["body"]
    assert "1,200 in, 300 out, 5,000 read from the cache; cost $0.0123" in status["body"]
    with db.session() as session:
        assert session.get(Task, comment.task_id).progress_comment_id == status["id"]  # type: ignore[union-attr]


def test_a_deleted_comment_is_posted_again_and_remembered(settings: Settings, db: Database,
                                                          seeded: LocalForge) -> None:
    clock = Clock()
    comment = progress(settings, db, seeded, clock)
    comment.update(state="running")
    record = seeded.issue_record(REPO, 3)
    record["comments"] = []  # a person deleted it
    seeded._save_issue(REPO, record)
    clock.now += 11
    assert comment.update(state="testing", tests="running `pytest`") is None
    [status] = statuses(seeded)
    assert "running the tests" in status["body"]
    with db.session() as session:
        assert session.get(Task, comment.task_id).progress_comment_id == status["id"]  # type: ignore[union-attr]


def test_a_failed_edit_keeps_the_state_for_the_next_update(settings: Settings, db: Database,
                                                           make_settings: Callable[..., Settings]) -> None:
    with FakeGitHub() as github:
        github.add_token("ghp_progress000000000000000000000000000", login="forgecrew-user")
        github.add_repo(REPO)
        github.add_issue(REPO, 3, "Crash", "it crashes")
        forge = GitHubForge(make_settings(forge="github", github_token="ghp_progress000000000000000000000000000",
                                          github_api_url=github.api_url), write_interval=0, sleep=lambda _: None)
        clock = Clock()
        comment = progress(settings, db, forge, clock)
        comment.update(state="running")
        github.fail_next("PATCH", r"/issues/comments/\d+$", 403,
                         body={"message": "Resource not accessible by integration"})
        problem = comment.update(final=True, state="failed", reason="tests failed")
        assert problem is not None and "403" in problem and comment.pending
        [status] = github.issue(REPO, 3).comments
        assert "working" in status["body"]  # the failed edit changed nothing
        edits = len(github.calls("PATCH"))
        assert comment.update(state="failed") is None and len(github.calls("PATCH")) == edits  # spaced, too
        comment.update(final=True)
        [status] = github.issue(REPO, 3).comments
        assert "failed" in status["body"] and "tests failed" in status["body"] and not comment.pending
        assert github.violations == []
