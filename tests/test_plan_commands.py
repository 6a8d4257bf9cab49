"""`/forgecrew approve` and plan revisions through the real coordinator app, PostgreSQL, Redis and the local
GitHub API server."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from common.db import Database
from common.models import CommentCommand, Task
from common.settings import Settings
from common.states import TaskState
from common.transitions import transition
from coordinator.app import create_app
from tests.factories import make_task
from tests.fakes.github_server import FakeGitHub
from tests.followup_support import people_on_github
from tests.support import headers, payload, queue_key, wait_for

pytestmark = pytest.mark.integration
REPO = "acme/widgets"
TOKEN = "ghp_plancommandtoken0000000000000000000"
PLAN = "1. Return an empty result for ''.\n2. Add a test."


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with people_on_github(REPO, TOKEN) as server:
        yield server


@pytest.fixture
def plan_settings(make_settings: Callable[..., Settings], github: FakeGitHub) -> Settings:
    return make_settings(forge="github", github_token=TOKEN, github_api_url=github.api_url,
                         github_write_interval_seconds=0)


@pytest.fixture
def client(plan_settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(plan_settings, run_reconciler=False)) as test_client:
        yield test_client


def waiting_task(db: Database) -> int:
    """A task on issue 7 whose first plan is posted, as a planning run leaves it."""
    task_id = make_task(db, repo=REPO, issue_number=7)
    with db.session() as session:
        task = session.get(Task, task_id)
        assert task is not None
        for state in (TaskState.QUEUED, TaskState.RUNNING, TaskState.AWAITING_APPROVAL):
            transition(session, task, state, actor="test")
        task.plan, task.plan_revision, task.plan_comment_id = PLAN, 1, 99
    return task_id


def say(client: TestClient, github: FakeGitHub, db: Database, text: str, *, author: str = "maintainer") -> str:
    """Post an issue comment as a signed webhook, wait for its command to finish, return forgecrew's reply."""
    stored = github.add_comment(REPO, 7, text, author=author)
    data = copy.deepcopy(payload("issue_comment", "created"))
    data["repository"]["full_name"] = REPO
    data["issue"]["number"] = 7
    data["issue"].pop("pull_request", None)
    data["comment"].update(id=stored["id"], body=text, user={**data["comment"]["user"], "login": author})
    data["sender"] = {**data["sender"], "login": author, "type": "User"}
    body = json.dumps(data).encode()
    assert client.post("/webhooks/github", content=body, headers=headers("issue_comment", body)).status_code == 200

    def done() -> CommentCommand | None:
        with db.session() as session:
            row = session.scalars(select(CommentCommand).where(CommentCommand.comment_id == stored["id"])).one()
            return row if row.state in ("done", "refused") else None

    return str(wait_for(done, what=f"the command in {text!r}").reply)


def load(db: Database, task_id: int) -> Task:
    with db.session() as session:
        task = session.get(Task, task_id)
        assert task is not None
        task.events  # noqa: B018  (load before the session closes)
        return task


def queued_messages(settings: Settings, queue: str = "backend") -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in redis.Redis.from_url(settings.broker_url).lrange(queue_key(queue), 0, -1)]


def test_approve_queues_the_waiting_task_naming_who_approved(client: TestClient, github: FakeGitHub, db: Database,
                                                             plan_settings: Settings) -> None:
    task_id = waiting_task(db)
    reply = say(client, github, db, "Looks right.\n/forgecrew approve")
    assert reply == f"plan approved: task {task_id} is queued on backend to make the change as planned."
    task = load(db, task_id)
    assert (task.state, task.plan_approved_by, task.plan) == ("queued", "maintainer", PLAN)
    moved = [e for e in task.events if e.from_state == "awaiting_approval"]
    assert [(e.to_state, e.actor, e.detail) for e in moved] == [
        ("queued", "comment:maintainer", "plan revision 1 approved by maintainer")]
    [message] = queued_messages(plan_settings)
    assert f"'task_id': {task_id}" in message["headers"]["kwargsrepr"]


def test_approve_without_a_waiting_plan_is_refused_with_the_reason(client: TestClient, github: FakeGitHub,
                                                                   db: Database, plan_settings: Settings) -> None:
    task_id = make_task(db, repo=REPO, issue_number=7)
    reply = say(client, github, db, "/forgecrew approve")
    assert reply.startswith(f"that did not work: task {task_id} is triaged, not waiting for a plan's approval")
    assert "`forgecrew:plan` label" in reply
    assert load(db, task_id).state == "triaged" and queued_messages(plan_settings) == []


def test_approving_twice_says_it_was_approved_already(client: TestClient, github: FakeGitHub, db: Database) -> None:
    task_id = waiting_task(db)
    say(client, github, db, "/forgecrew approve")
    again = say(client, github, db, "/forgecrew approve")
    assert f"task {task_id} is queued" in again and "approved by maintainer already" in again


def test_a_reader_cannot_approve(client: TestClient, github: FakeGitHub, db: Database,
                                 plan_settings: Settings) -> None:
    task_id = waiting_task(db)
    reply = say(client, github, db, "/forgecrew approve", author="reader")
    assert "only people with write access" in reply and "(`approve`) was not carried out" in reply
    task = load(db, task_id)
    assert (task.state, task.plan_approved_by) == ("awaiting_approval", None)
    assert queued_messages(plan_settings) == []


def test_a_mention_on_a_waiting_plan_asks_for_a_revision(client: TestClient, github: FakeGitHub, db: Database,
                                                         plan_settings: Settings) -> None:
    task_id = waiting_task(db)
    reply = say(client, github, db, "@forgecrew also handle `None`")
    assert reply.startswith(f"revising the plan of task {task_id} with your changes")
    task = load(db, task_id)
    assert (task.state, task.plan_feedback, task.plan_approved_by) == ("queued", "also handle `None`", None)
    [moved] = [e for e in task.events if e.from_state == "awaiting_approval"]
    assert moved.to_state == "queued" and moved.detail == "revision of plan 1 asked by maintainer: also handle `None`"
    assert not any(e.detail.startswith("request from ") for e in task.events)  # not a mid-run request
    with db.session() as session:
        assert len(session.scalars(select(Task)).all()) == 1  # no second task on the issue
    assert len(queued_messages(plan_settings)) == 1


def test_a_waiting_task_can_be_cancelled_and_its_status_says_how_to_approve(client: TestClient, github: FakeGitHub,
                                                                            db: Database) -> None:
    task_id = waiting_task(db)
    status = say(client, github, db, "/forgecrew status")
    assert f"task {task_id} is **awaiting_approval**" in status and "`/forgecrew approve`" in status
    retry = say(client, github, db, "/forgecrew retry")
    assert "its plan waits for approval: comment `/forgecrew approve`" in retry
    assert "is cancelled" in say(client, github, db, "/forgecrew cancel")
    assert load(db, task_id).state == "cancelled"
