"""A task the reaper gave up on (its workers kept dying) says so on its issue, once, and retries GitHub."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update

from common.db import Database, db_now
from common.forge.factory import make_forge
from common.models import Task
from common.settings import Settings
from common.states import TaskState
from common.transitions import transition
from coordinator.given_up_notice import GiveUpNotices
from tests.factories import make_task
from tests.fakes.github_server import FakeGitHub

pytestmark = pytest.mark.integration
REPO = "acme/widgets"
TOKEN = "ghp_givenupnoticetoken0000000000000000"
BOT = "forgecrew[bot]"


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub() as server:
        server.add_token(TOKEN, login=BOT)
        server.add_repo(REPO)
        for number in (1, 2, 3):
            server.add_issue(REPO, number, f"Issue {number}", "", labels=("forgecrew", "forgecrew:working"))
        yield server
        assert server.violations == [], "requests outside GitHub's OpenAPI description"


@pytest.fixture
def notices(make_settings: Callable[..., Settings], github: FakeGitHub, db: Database) -> GiveUpNotices:
    settings = make_settings(forge="github", github_token=TOKEN, github_api_url=github.api_url,
                             github_write_interval_seconds=0)
    return GiveUpNotices(Database(settings), lambda installation_id: make_forge(settings, installation_id))


def failed(db: Database, number: int, reason: str, *, ago: float = 0) -> int:
    """A task failed `ago` seconds ago with `reason`."""
    task_id = make_task(db, repo=REPO, issue_number=number)
    with db.session() as session:
        task = session.get(Task, task_id)
        assert task is not None
        task.attempt, task.failure_reason = 3, reason
        transition(session, task, TaskState.FAILED, actor="reconciler")
    with db.session() as session:
        session.execute(update(Task).where(Task.id == task_id).values(
            updated_at=db_now(session) - timedelta(seconds=ago)))
    return task_id


def bodies(github: FakeGitHub, number: int) -> list[str]:
    return [c["body"] for c in github.issue(REPO, number).comments if c["login"] == BOT]


def test_only_a_recent_give_up_is_announced_and_only_once(notices: GiveUpNotices, github: FakeGitHub,
                                                          db: Database) -> None:
    lost = failed(db, 1, "worker lost on 3 attempts (last: backend@host-7/pid12@host-7)")
    failed(db, 2, "tests failed after 3 repairs")  # its worker said so itself
    failed(db, 3, "worker lost on 3 attempts (last: w)", ago=2 * 3600)  # an earlier process's
    assert notices.sweep() == [lost]
    assert notices.sweep() == []
    issue = github.issue(REPO, 1)
    assert "forgecrew:failed" in issue.labels and "forgecrew:working" not in issue.labels
    [body] = bodies(github, 1)
    assert "worker was lost on all 3 attempts" in body and "/forgecrew retry" in body and "host-7" not in body
    assert bodies(github, 2) == bodies(github, 3) == []


def test_a_github_error_is_retried_next_sweep_and_the_progress_comment_edited(notices: GiveUpNotices,
                                                                               github: FakeGitHub,
                                                                               db: Database) -> None:
    task_id = failed(db, 1, "worker lost on 3 attempts (last: w)")
    comment = github.add_comment(REPO, 1, "progress so far", author=BOT)
    with db.session() as session:
        session.execute(update(Task).where(Task.id == task_id).values(progress_comment_id=comment["id"]))
    github.fail_next("POST", rf"/repos/{REPO}/issues/1/labels", 403)  # not retried in the call
    assert notices.sweep() == []
    assert notices.sweep() == [task_id]
    [body] = bodies(github, 1)  # the one progress comment, edited
    assert "worker was lost on all 3 attempts" in body
