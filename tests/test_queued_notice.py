"""A task that waits for a worker says so on its issue, in its one progress comment, once per send."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from common.db import Database, db_now
from common.forge.factory import make_forge
from common.models import Task
from common.settings import Settings
from common.states import TaskState
from common.transitions import transition
from coordinator.queued_notice import QueuedNotices
from tests.factories import make_task
from tests.fakes.github_server import FakeGitHub

pytestmark = pytest.mark.integration
REPO = "acme/widgets"
TOKEN = "ghp_queuednoticetoken00000000000000000"
BOT = "forgecrew[bot]"


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub() as server:
        server.add_token(TOKEN, login=BOT)
        server.add_repo(REPO)
        for number in (1, 2, 3):
            server.add_issue(REPO, number, f"Issue {number}", "")
        yield server
        assert server.violations == [], "requests outside GitHub's OpenAPI description"


@pytest.fixture
def notices(make_settings: Callable[..., Settings], github: FakeGitHub, db: Database) -> QueuedNotices:
    settings = make_settings(forge="github", github_token=TOKEN, github_api_url=github.api_url,
                             github_write_interval_seconds=0, queued_notice_seconds=5)
    return QueuedNotices(Database(settings), lambda installation_id: make_forge(settings, installation_id))


def queued(db: Database, number: int, *, waited: float) -> int:
    """A task sent `waited` seconds ago and not yet claimed."""
    task_id = make_task(db, repo=REPO, issue_number=number)
    with db.session() as session:
        task = session.get(Task, task_id)
        assert task is not None
        transition(session, task, TaskState.QUEUED, actor="test")
        task.dispatch_count = 1
    with db.session() as session:
        session.execute(update(Task).where(Task.id == task_id).values(
            dispatched_at=db_now(session) - timedelta(seconds=waited)))
    return task_id


def bodies(github: FakeGitHub, number: int) -> list[str]:
    return [c["body"] for c in github.issue(REPO, number).comments if c["login"] == BOT]


def test_a_task_waiting_past_the_threshold_is_announced_once(notices: QueuedNotices, db: Database,
                                                             github: FakeGitHub) -> None:
    first = queued(db, 1, waited=60)
    second = queued(db, 2, waited=60)
    queued(db, 3, waited=0)  # just sent: a worker may take it any moment
    assert notices.sweep() == [first, second]
    [comment] = bodies(github, 2)
    assert "<!-- forgecrew:progress -->" in comment and f"task {second} · queued" in comment
    assert "queued on **backend**" in comment and "behind 1 other task(s)" in comment
    assert bodies(github, 3) == []
    assert notices.sweep() == []  # announced once per send: no edit every round
    assert len(bodies(github, 1)) == 1 and len(github.calls("PATCH")) == 0
    with db.session() as session:
        task = session.get(Task, second)
        assert task is not None and task.progress_comment_id == github.issue(REPO, 2).comments[0]["id"]


def test_a_retried_task_edits_its_existing_comment_and_a_claimed_one_is_left_alone(
        notices: QueuedNotices, db: Database, github: FakeGitHub) -> None:
    waiting = queued(db, 1, waited=60)
    old = github.add_comment(REPO, 1, "<!-- forgecrew:progress -->\nfailed", author=BOT)
    with db.session() as session:
        session.execute(update(Task).where(Task.id == waiting).values(progress_comment_id=old["id"]))
    claimed = queued(db, 2, waited=60)
    with db.session() as session:
        task = session.get(Task, claimed)
        assert task is not None
        transition(session, task, TaskState.RUNNING, actor="worker")
    assert notices.sweep() == [waiting]
    [comment] = bodies(github, 1)  # edited in place, not a second comment
    assert "· queued" in comment and "failed" not in comment
    assert bodies(github, 2) == []


def test_a_forge_error_is_tried_again_at_the_next_sweep(notices: QueuedNotices, db: Database,
                                                        github: FakeGitHub) -> None:
    task_id = queued(db, 1, waited=60)
    github.fail_next("POST", r"/issues/1/comments$", 502)
    assert notices.sweep() == []
    assert notices.sweep() == [task_id]
    assert len(bodies(github, 1)) == 1


def test_a_forge_that_cannot_be_built_skips_the_notice_without_failing_the_sweep(
        make_settings: Callable[..., Settings], db: Database) -> None:
    settings = make_settings(forge="github", queued_notice_seconds=5)  # no GitHub token or App

    def no_forge(installation_id: int | None) -> Any:
        return make_forge(settings, installation_id)

    notices = QueuedNotices(Database(settings), no_forge)
    queued(db, 1, waited=60)
    assert notices.sweep() == [] and notices.sweep() == []  # said once in the log, never raised
