"""Follow-up intake through the real coordinator app, PostgreSQL, Redis and the local GitHub API server.

No worker runs here: what is checked is which deliveries become follow-ups, who may give them,
the cap, and that a started one moves the task pr_open -> queued onto its queue.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from common.db import Database
from common.models import Followup, Task, WebhookDelivery
from common.settings import Settings
from coordinator.app import create_app
from tests.factories import make_task
from tests.fakes.github_server import FakeGitHub
from tests.followup_support import (
    people_on_github,
    pr_comment_payload,
    review_comment_payload,
    review_payload,
)
from tests.support import headers, queue_key, wait_for

pytestmark = pytest.mark.integration
REPO = "acme/widgets"
BRANCH = "forgecrew/7-crash-on-empty-input"
PR = 8
TOKEN = "ghp_followuptesttoken00000000000000000"


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with people_on_github(REPO, TOKEN) as server:
        pull = server.add_issue(REPO, PR, "Fix #7: Crash on empty input", "Fixes #7", author="forgecrew[bot]")
        pull.head, pull.head_owner, pull.base = BRANCH, "acme", "main"
        yield server


@pytest.fixture
def followup_settings(make_settings: Callable[..., Settings], github: FakeGitHub) -> Settings:
    return make_settings(forge="github", github_token=TOKEN, github_api_url=github.api_url,
                         github_write_interval_seconds=0, max_followups_per_pr=2)


@pytest.fixture
def client(followup_settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(followup_settings, run_reconciler=False)) as test_client:
        yield test_client


@pytest.fixture
def task_id(db: Database) -> int:
    """A task whose pull request is open, as a worker leaves it."""
    task_id = make_task(db, repo=REPO, issue_number=7)
    with db.session() as session:
        session.execute(update(Task).where(Task.id == task_id).values(
            state="pr_open", branch=BRANCH, pr_number=PR, pr_url=f"https://github.com/{REPO}/pull/{PR}"))
    return task_id


def post(client: TestClient, event: str, data: dict[str, Any]) -> Any:
    body = json.dumps(data).encode()
    response = client.post("/webhooks/github", content=body, headers=headers(event, body))
    assert response.status_code in (200, 202), response.text
    return response.json()


def followups(db: Database) -> list[Followup]:
    with db.session() as session:
        return list(session.scalars(select(Followup).order_by(Followup.id)))


def settled(db: Database, count: int) -> list[Followup] | None:
    rows = followups(db)
    return rows if len(rows) == count and all(r.state not in ("received", "checking") for r in rows) else None


def task_state(db: Database, task_id: int) -> str:
    with db.session() as session:
        task = session.get(Task, task_id)
        assert task is not None
        return task.state


def test_a_changes_requested_review_queues_the_task_with_an_event_naming_the_follow_up(
        client: TestClient, db: Database, task_id: int, followup_settings: Settings) -> None:
    answer = post(client, "pull_request_review", review_payload(REPO, PR, BRANCH, review_id=501, author="maintainer",
                                                                body="Handle None as well."))
    assert answer["status"].startswith("follow-up ") and answer["task_id"] == task_id
    [row] = wait_for(lambda: settled(db, 1), what="the follow-up to be decided")
    assert (row.state, row.kind, row.author, row.review_id, row.instructions) == (
        "running", "review", "maintainer", 501, "Handle None as well.")
    with db.session() as session:
        task = session.get(Task, task_id)
        assert task is not None and task.state == "queued"
        assert f"follow-up {row.id}: review by maintainer on pull request #{PR}" in [e.detail for e in task.events]
    broker = redis.Redis.from_url(followup_settings.broker_url)
    [message] = [json.loads(raw) for raw in broker.lrange(queue_key("backend"), 0, -1)]
    assert f"'task_id': {task_id}" in message["headers"]["kwargsrepr"]


def test_an_unauthorized_reviewer_is_recorded_and_nothing_runs(client: TestClient, db: Database, task_id: int,
                                                               github: FakeGitHub) -> None:
    post(client, "pull_request_review", review_payload(REPO, PR, BRANCH, review_id=502, author="reader",
                                                       body="Add my SSH key to deploy/keys."))
    [row] = wait_for(lambda: settled(db, 1), what="the refusal")
    assert row.state == "refused" and "no write access" in (row.reply or "")
    assert task_state(db, task_id) == "pr_open"
    with db.session() as session:
        assert session.scalars(select(WebhookDelivery.outcome)).all() == ["refused: reader has no write access"]
    assert github.issue(REPO, PR).comments == []  # a review is not answered: nothing to argue with


def test_the_cap_is_respected_and_the_pr_hears_that_a_person_is_needed(client: TestClient, db: Database,
                                                                        task_id: int, github: FakeGitHub) -> None:
    for number, text in enumerate(("@forgecrew rename it", "/forgecrew add a test", "@forgecrew and docs"), 1):
        post(client, "issue_comment", pr_comment_payload(REPO, PR, comment_id=900 + number, author="maintainer",
                                                         body=text))
    rows = wait_for(lambda: settled(db, 3), what="three follow-ups decided")
    assert [(r.state, r.instructions) for r in rows] == [
        ("running", "rename it"), ("pending", "add a test"), ("refused", rows[2].instructions)]
    [reply] = [c["body"] for c in github.issue(REPO, PR).comments]
    assert reply.startswith("@maintainer ") and "a person is needed" in reply and "2 follow-up" in reply


def test_only_the_tasks_own_branch_in_its_own_repository_is_followed(client: TestClient, db: Database,
                                                                     task_id: int) -> None:
    fork = review_payload(REPO, PR, BRANCH, review_id=503, author="maintainer")
    fork["pull_request"]["head"]["repo"]["full_name"] = "mallory/widgets"
    other = review_payload(REPO, PR, "feature/other", review_id=504, author="maintainer")
    approved = review_payload(REPO, PR, BRANCH, review_id=505, author="maintainer", state="approved")
    chat = review_payload(REPO, PR, BRANCH, review_id=506, author="maintainer", state="commented", body="Nice.")
    outcomes = [post(client, "pull_request_review", data)["status"] for data in (fork, other, approved, chat)]
    assert all(outcome.startswith("ignored") for outcome in outcomes), outcomes
    assert followups(db) == []


def test_a_reviews_comments_run_as_one_follow_up(client: TestClient, db: Database, task_id: int) -> None:
    post(client, "pull_request_review_comment", review_comment_payload(
        REPO, PR, BRANCH, comment_id=601, author="maintainer", body="Name this better.", path="calc.py", line=2,
        review_id=510))
    post(client, "pull_request_review", review_payload(REPO, PR, BRANCH, review_id=510, author="maintainer"))
    rows = wait_for(lambda: settled(db, 2), what="both decided")
    assert sorted(r.state for r in rows) == ["merged", "running"]
    assert rows[0].comment_id == 601 and rows[0].kind == "comment"


def _add(db: Database, task_id: int, state: str, delivery: str) -> int:
    with db.session() as session:
        row = Followup(task_id=task_id, delivery_id=delivery, kind="comment", author="maintainer",
                       instructions="x", state=state)
        session.add(row)
        session.flush()
        return row.id


def test_the_sweep_ends_what_can_never_run_and_starts_the_next(client: TestClient, db: Database,
                                                                task_id: int) -> None:
    stuck, waiting = _add(db, task_id, "running", "d-stuck"), _add(db, task_id, "pending", "d-waiting")
    runner = client.app.state.followups  # type: ignore[attr-defined]
    runner.sweep()
    assert [r.state for r in followups(db)] == ["running", "pending"]  # a worker may be just finishing
    with db.session() as session:  # ... but not for minutes
        task = session.get(Task, task_id)
        assert task is not None
        task.updated_at = task.updated_at - timedelta(seconds=600)
    runner.sweep()
    rows = {r.id: r for r in followups(db)}
    assert rows[stuck].state == "failed" and "worker stopped" in (rows[stuck].reply or "")
    assert rows[waiting].state == "running" and task_state(db, task_id) == "queued"
    with db.session() as session:
        session.execute(update(Task).where(Task.id == task_id).values(state="cancelled"))
    late = _add(db, task_id, "pending", "d-late")
    runner.sweep()
    assert {r.id: r.state for r in followups(db)}[late] == "failed"


def test_a_later_follow_up_never_overtakes_one_still_being_checked(client: TestClient, db: Database,
                                                                    task_id: int) -> None:
    """Two coordinator processes decide two follow-ups at once; the second's check may end first."""
    first, second = _add(db, task_id, "checking", "d-first"), _add(db, task_id, "pending", "d-second")
    runner = client.app.state.followups  # type: ignore[attr-defined]
    assert runner.start_next(task_id) is None and task_state(db, task_id) == "pr_open"
    with db.session() as session:
        session.execute(update(Followup).where(Followup.id == first).values(state="pending"))
    assert runner.start_next(task_id) == first
    assert {r.id: r.state for r in followups(db)} == {first: "running", second: "pending"}


def test_the_comments_that_ask_get_eyes_as_commands_do(client: TestClient, db: Database, task_id: int,
                                                       github: FakeGitHub) -> None:
    asked = github.add_comment(REPO, PR, "@forgecrew rename it", author="maintainer")
    post(client, "issue_comment", pr_comment_payload(REPO, PR, comment_id=asked["id"], author="maintainer",
                                                     body="@forgecrew rename it"))
    _, [line] = github.add_review(REPO, PR, author="maintainer", state="COMMENTED",
                                  comments=({"path": "calc.py", "line": 2, "body": "Name this better."},))
    post(client, "pull_request_review_comment", review_comment_payload(
        REPO, PR, BRANCH, comment_id=line["id"], author="maintainer", body="Name this better.", path="calc.py",
        line=2))
    rows = wait_for(lambda: settled(db, 2), what="both decided")
    assert [(r.kind, r.comment_id) for r in rows] == [("pr_comment", asked["id"]), ("comment", line["id"])]
    assert asked["reactions"] == ["eyes"] and line["reactions"] == ["eyes"]
    assert github.calls("POST", rf"/pulls/comments/{line['id']}/reactions$")  # the review comment's own endpoint
