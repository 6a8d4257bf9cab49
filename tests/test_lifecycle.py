"""A task follows its PR and its issue (real fixture payloads, the real app on PostgreSQL and Redis), and the
reconciler collects finished tasks' workspaces."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from common.celery_app import make_celery
from common.db import Database
from common.errors import TaskCancelled
from common.leases import claim, load_fenced
from common.models import Task, WebhookDelivery
from common.settings import Settings
from common.states import TaskState
from common.transitions import transition
from coordinator.app import create_app
from coordinator.dispatch import Dispatcher
from coordinator.reconciler import Reconciler
from tests.factories import make_task
from tests.support import headers, payload

pytestmark = pytest.mark.integration

REPO = "Codertocat/Hello-World"  # the fixtures' repository
BRANCH = "forgecrew/issue-1-fix-the-thing"


@pytest.fixture
def client(settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(settings, run_reconciler=False)) as test_client:
        yield test_client


def post(client: TestClient, event: str, data: dict[str, Any], delivery: str):  # type: ignore[no-untyped-def]
    body = json.dumps(data).encode()
    response = client.post("/webhooks/github", content=body, headers=headers(event, body, delivery=delivery))
    assert client.app.state.services.sender.wait_idle()  # the send goes out after the answer
    return response


def pr_closed(number: int = 7, *, merged: bool, branch: str = BRANCH, head_repo: str = REPO,
              sender: str = "Codertocat", sender_type: str = "User") -> dict[str, Any]:
    """pull_request.closed as GitHub sent it, with the number, merge, head branch and head repository changed."""
    data = copy.deepcopy(payload("pull_request", "closed"))
    data["number"] = data["pull_request"]["number"] = number
    data["pull_request"]["merged"] = merged
    data["pull_request"]["head"]["ref"] = branch
    data["pull_request"]["head"]["repo"]["full_name"] = head_repo
    data["sender"] = {**data["sender"], "login": sender, "type": sender_type}
    return data


def issue_closed(number: int = 1, *, reason: str = "completed") -> dict[str, Any]:
    """issues.opened as GitHub sent it, closed (the fixtures have no issues.closed; GitHub's differs only so)."""
    data = copy.deepcopy(payload("issues", "opened"))
    data["action"] = "closed"
    data["issue"].update(number=number, state="closed", state_reason=reason, closed_at="2019-05-15T15:30:00Z")
    return data


def task_with_pr(db: Database, *, issue: int = 1, pr: int = 7, branch: str = BRANCH) -> int:
    """A task whose run opened PR `pr` from `branch`, as the pipeline leaves it."""
    task_id = make_task(db, repo=REPO, issue_number=issue)
    with db.session() as session:
        task = session.get(Task, task_id)
        for state in (TaskState.QUEUED, TaskState.RUNNING, TaskState.PR_OPEN):
            transition(session, task, state, actor="test")
        task.branch, task.pr_number = branch, pr
        task.pr_url = f"https://github.com/{REPO}/pull/{pr}"
    return task_id


def state_of(db: Database, task_id: int) -> str:
    with db.session() as session:
        return session.get(Task, task_id).state


def last_event(db: Database, task_id: int) -> tuple[str | None, str, str, str]:
    with db.session() as session:
        event = session.get(Task, task_id).events[-1]
        return event.from_state, event.to_state, event.actor, event.detail


def outcome(db: Database, delivery_id: str) -> WebhookDelivery:
    with db.session() as session:
        return session.scalars(select(WebhookDelivery).where(WebhookDelivery.delivery_id == delivery_id)).one()


def test_a_merged_pr_moves_its_task_to_done(client: TestClient, db: Database) -> None:
    task_id = task_with_pr(db)
    assert post(client, "pull_request", pr_closed(merged=True), "merge-1").status_code == 200
    assert state_of(db, task_id) == "done"
    assert last_event(db, task_id) == ("pr_open", "done", "webhook:merge-1", "pull request #7 merged by Codertocat")
    row = outcome(db, "merge-1")
    assert row.task_id == task_id and row.outcome == f"task {task_id} done: pull request #7 merged by Codertocat"


def test_a_pr_closed_unmerged_cancels_its_task(client: TestClient, db: Database) -> None:
    task_id = task_with_pr(db)
    assert post(client, "pull_request", pr_closed(merged=False), "close-1").status_code == 200
    assert state_of(db, task_id) == "cancelled"
    detail = "pull request #7 closed unmerged by Codertocat"
    assert last_event(db, task_id)[1:] == ("cancelled", "webhook:close-1", detail)


@pytest.mark.parametrize("change", [
    {"number": 8},  # another PR of the same repository
    {"branch": "forgecrew/issue-2-other"},  # the number, but not the task's branch
    {"head_repo": "mallory/Hello-World"},  # a fork's PR with a look-alike branch
])
def test_a_pr_that_is_not_the_tasks_moves_nothing(client: TestClient, db: Database, change: dict[str, Any]) -> None:
    task_id = task_with_pr(db)
    assert post(client, "pull_request", pr_closed(merged=True, **change), "other").status_code == 200
    assert state_of(db, task_id) == "pr_open"
    assert outcome(db, "other").outcome.startswith("ignored: pull request #")


def test_a_pr_in_another_repository_moves_nothing(client: TestClient, db: Database) -> None:
    task_id = task_with_pr(db)
    data = pr_closed(merged=True, head_repo="acme/app")
    data["repository"]["full_name"] = "acme/app"
    post(client, "pull_request", data, "elsewhere")
    assert state_of(db, task_id) == "pr_open"


def test_a_merge_by_a_bot_still_counts(client: TestClient, db: Database) -> None:
    """Merge queues and auto-merge send the event as a bot; bots only never start work."""
    task_id = task_with_pr(db)
    post(client, "pull_request", pr_closed(merged=True, sender="mergify[bot]", sender_type="Bot"), "bot-merge")
    assert state_of(db, task_id) == "done"


def test_redelivered_merge_is_a_duplicate(client: TestClient, db: Database) -> None:
    task_id = task_with_pr(db)
    post(client, "pull_request", pr_closed(merged=True), "merge-twice")
    again = post(client, "pull_request", pr_closed(merged=True), "merge-twice")
    assert again.json()["status"] == "duplicate"
    with db.session() as session:
        assert [e.to_state for e in session.get(Task, task_id).events].count("done") == 1


def test_a_merged_pr_ends_a_failed_follow_up_as_done(client: TestClient, db: Database) -> None:
    task_id = task_with_pr(db)
    with db.session() as session:
        task = session.get(Task, task_id)
        for state in (TaskState.QUEUED, TaskState.FAILED):  # a follow-up that failed; the PR stayed open
            transition(session, task, state, actor="test")
    post(client, "pull_request", pr_closed(merged=True), "merge-failed")
    assert state_of(db, task_id) == "done"


def test_closing_the_issue_cancels_a_running_task_as_an_operator_cancel_would(
        client: TestClient, db: Database) -> None:
    task_id = make_task(db, repo=REPO, issue_number=1)
    with db.session() as session:
        transition(session, session.get(Task, task_id), TaskState.QUEUED, actor="test")
    held = claim(db, task_id, "worker-1")
    assert held is not None and state_of(db, task_id) == "running"
    assert post(client, "issues", issue_closed(reason="not_planned"), "issue-closed").status_code == 200
    assert state_of(db, task_id) == "cancelled"
    assert last_event(db, task_id) == ("running", "cancelled", "webhook:issue-closed",
                                       "issue #1 closed (not_planned) by Codertocat")
    with db.session() as session:
        assert session.get(Task, task_id).lease_owner is None
        with pytest.raises(TaskCancelled, match="cancelled by webhook:issue-closed: issue #1 closed"):
            load_fenced(session, held)  # the worker's next fenced write: it stops there


def test_closing_the_issue_leaves_an_open_pr_to_decide_unless_not_planned(client: TestClient, db: Database) -> None:
    """Merging a PR that says "Fixes #1" closes the issue as completed, often before the merge's own delivery."""
    task_id = task_with_pr(db)
    post(client, "issues", issue_closed(reason="completed"), "fixed-by-pr")
    assert state_of(db, task_id) == "pr_open"
    assert outcome(db, "fixed-by-pr").outcome == f"recorded: task {task_id}'s pull request #7 decides"
    post(client, "pull_request", pr_closed(merged=True), "then-merged")
    assert state_of(db, task_id) == "done"

    other = task_with_pr(db, issue=2, pr=9, branch="forgecrew/issue-2-x")
    post(client, "issues", issue_closed(2, reason="not_planned"), "not-planned")
    assert state_of(db, other) == "cancelled"


def test_closing_an_issue_without_a_task_is_ignored(client: TestClient, db: Database) -> None:
    assert post(client, "issues", issue_closed(5), "no-task").status_code == 200
    assert outcome(db, "no-task").outcome == "ignored: issue #5 has no task in flight"


# -- the reconciler collects finished tasks' workspaces -------------------------------------------------


def _workspace(root: Path, task_id: int, *, age_days: float) -> Path:
    path = root / "tasks" / str(task_id)
    (path / "repo").mkdir(parents=True)
    stamp = (datetime.now(UTC) - timedelta(days=age_days)).timestamp()
    for entry in (path / "repo", path):
        os.utime(entry, (stamp, stamp))
    return path


def _set_state(db: Database, task_id: int, *states: TaskState) -> None:
    with db.session() as session:
        task = session.get(Task, task_id)
        for state in states:
            transition(session, task, state, actor="test")


def test_the_reconciler_removes_finished_tasks_workspaces_past_retention_at_most_hourly(
        make_settings, db: Database, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(workspace_retention_days=2)
    root = settings.workspace_root
    done, cancelled, failed, pr_open, queued, recent = (make_task(db, issue_number=n) for n in range(1, 7))
    _set_state(db, done, TaskState.QUEUED, TaskState.RUNNING, TaskState.PR_OPEN, TaskState.DONE)
    _set_state(db, cancelled, TaskState.CANCELLED)
    _set_state(db, failed, TaskState.QUEUED, TaskState.FAILED)
    _set_state(db, pr_open, TaskState.QUEUED, TaskState.RUNNING, TaskState.PR_OPEN)
    _set_state(db, queued, TaskState.QUEUED)
    _set_state(db, recent, TaskState.CANCELLED)
    old = {task_id: _workspace(root, task_id, age_days=3) for task_id in (done, cancelled, failed, pr_open, queued)}
    young = _workspace(root, recent, age_days=1)

    database = Database(settings)
    reconciler = Reconciler(database, Dispatcher(database, make_celery(settings)))
    try:
        report = reconciler.run_once()
        assert sorted(report.workspaces_removed) == sorted(str(old[i]) for i in (done, cancelled, failed))
        assert old[pr_open].exists() and old[queued].exists() and young.exists()  # a follow-up may come

        _set_state(db, pr_open, TaskState.DONE)
        assert reconciler.run_once().workspaces_removed == []  # not again within the hour
        reconciler.next_workspace_gc = 0.0  # an hour later
        assert reconciler.run_once().workspaces_removed == [str(old[pr_open])]
    finally:
        database.dispose()
