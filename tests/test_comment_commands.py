"""Comment commands through the real coordinator app, PostgreSQL, Redis and the local GitHub API server."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from common.db import Database
from common.models import CommentCommand, Task, WebhookDelivery
from common.settings import Settings
from coordinator.app import create_app
from coordinator.conversation.parse import HELP, parse
from tests.factories import make_task
from tests.fakes.github_server import FakeGitHub
from tests.followup_support import people_on_github
from tests.support import headers, payload, queue_key, wait_for

pytestmark = pytest.mark.integration
REPO = "acme/widgets"
TOKEN = "ghp_commandtesttoken000000000000000000"


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with people_on_github(REPO, TOKEN) as server:
        yield server


@pytest.fixture
def commands_settings(make_settings: Callable[..., Settings], github: FakeGitHub) -> Settings:
    return make_settings(forge="github", github_token=TOKEN, github_api_url=github.api_url,
                         github_write_interval_seconds=0)


@pytest.fixture
def client(commands_settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(commands_settings, run_reconciler=False)) as test_client:
        yield test_client


def comment(github: FakeGitHub, text: str, *, author: str = "maintainer", kind: str = "User",
            action: str = "created") -> dict[str, Any]:
    """issue_comment as GitHub sent it, for a comment the fake server holds (so it can be reacted to)."""
    stored = github.add_comment(REPO, 7, text, author=author, kind=kind)
    data = copy.deepcopy(payload("issue_comment", "created"))
    data["action"] = action
    data["repository"]["full_name"] = REPO
    data["issue"]["number"] = 7
    data["issue"].pop("pull_request", None)
    data["comment"].update(id=stored["id"], body=text, user={**data["comment"]["user"], "login": author,
                                                               "type": kind})
    data["sender"] = {**data["sender"], "login": author, "type": kind}
    return data


def post(client: TestClient, data: dict[str, Any]) -> Any:
    body = json.dumps(data).encode()
    return client.post("/webhooks/github", content=body, headers=headers("issue_comment", body))


def replies(github: FakeGitHub) -> list[str]:
    return [c["body"] for c in github.issue(REPO, 7).comments if c["login"] == "forgecrew[bot]"]


def command_row(db: Database, comment_id: int) -> CommentCommand:
    with db.session() as session:
        return session.scalars(select(CommentCommand).where(CommentCommand.comment_id == comment_id)).one()


def finished(db: Database, comment_id: int) -> CommentCommand | None:
    row = command_row(db, comment_id)
    return row if row.state in ("done", "refused") else None


def test_status_is_acknowledged_with_a_reaction_and_answered(client: TestClient, github: FakeGitHub,
                                                             db: Database) -> None:
    task_id = make_task(db, repo=REPO, issue_number=7)
    data = comment(github, "/forgecrew status")
    response = post(client, data)
    assert response.status_code == 200 and response.json()["status"].startswith("command ")
    row = wait_for(lambda: finished(db, data["comment"]["id"]), what="the command to finish")
    assert row.state == "done" and row.name == "status"
    stored = next(c for c in github.issue(REPO, 7).comments if c["id"] == data["comment"]["id"])
    assert stored["reactions"] == ["eyes"]
    [reply] = replies(github)
    assert reply.startswith("@maintainer ") and f"task {task_id} is **triaged** on backend" in reply


def test_cancel_and_retry_change_the_task(client: TestClient, github: FakeGitHub, db: Database) -> None:
    task_id = make_task(db, repo=REPO, issue_number=7)
    cancel = comment(github, "Please stop.\n/forgecrew cancel")
    post(client, cancel)
    wait_for(lambda: finished(db, cancel["comment"]["id"]), what="cancel")
    retry = comment(github, "/forgecrew retry")
    post(client, retry)
    wait_for(lambda: finished(db, retry["comment"]["id"]), what="retry")
    with db.session() as session:
        task = session.get(Task, task_id)
        assert task is not None
        actors = [(event.to_state, event.actor) for event in task.events]
    assert ("cancelled", "comment:maintainer") in actors and ("queued", "comment:maintainer") in actors
    assert task.state == "queued"
    assert "is cancelled" in replies(github)[0] and "queued again" in replies(github)[1]


def test_route_moves_a_queued_task_to_another_queue(client: TestClient, github: FakeGitHub, db: Database,
                                                    commands_settings: Settings) -> None:
    task_id = make_task(db, repo=REPO, issue_number=7, specialty="backend")
    data = comment(github, "/forgecrew route frontend")
    post(client, data)
    wait_for(lambda: finished(db, data["comment"]["id"]), what="route")
    with db.session() as session:
        task = session.get(Task, task_id)
        assert task is not None and (task.specialty, task.state) == ("frontend", "queued")
    broker = redis.Redis.from_url(commands_settings.broker_url)
    [message] = [json.loads(raw) for raw in broker.lrange(queue_key("frontend"), 0, -1)]
    assert message["headers"]["argsrepr"] == "()" and f"'task_id': {task_id}" in message["headers"]["kwargsrepr"]
    assert "moved to the frontend queue" in replies(github)[0]


def test_a_reader_is_refused_once_and_nothing_changes(client: TestClient, github: FakeGitHub, db: Database) -> None:
    task_id = make_task(db, repo=REPO, issue_number=7)
    first, second = comment(github, "/forgecrew cancel", author="reader"), comment(github, "/forgecrew cancel",
                                                                                   author="reader")
    post(client, first)
    wait_for(lambda: finished(db, first["comment"]["id"]), what="the first refusal")
    post(client, second)
    wait_for(lambda: finished(db, second["comment"]["id"]), what="the second refusal")
    assert command_row(db, second["comment"]["id"]).state == "refused"
    with db.session() as session:
        outcomes = set(session.scalars(select(WebhookDelivery.outcome)))
    assert outcomes == {"refused: reader has no write access"}
    [reply] = replies(github)  # answered once, not twice
    assert "write access" in reply
    with db.session() as session:
        assert session.get(Task, task_id).state == "triaged"  # type: ignore[union-attr]


def test_bots_edits_and_talk_are_no_commands(client: TestClient, github: FakeGitHub, db: Database) -> None:
    outcomes = [post(client, comment(github, "/forgecrew cancel", author="ci[bot]", kind="Bot")).json(),
                post(client, comment(github, "/forgecrew cancel", action="edited")).json(),
                post(client, comment(github, "Like this:\n```\n/forgecrew cancel\n```")).json(),
                post(client, comment(github, "> /forgecrew cancel\nno, please don't")).json()]
    assert [o["status"].split(":")[0] for o in outcomes] == ["ignored"] * 4
    with db.session() as session:
        assert session.scalars(select(CommentCommand)).all() == []
        assert len(session.scalars(select(WebhookDelivery)).all()) == 4


def test_unknown_command_gets_the_help(client: TestClient, github: FakeGitHub, db: Database) -> None:
    data = comment(github, "/forgecrew dance")
    post(client, data)
    wait_for(lambda: finished(db, data["comment"]["id"]), what="help")
    [reply] = replies(github)
    assert "`dance` is not a command I know" in reply and HELP in reply


def test_a_mention_starts_a_task_with_the_request(client: TestClient, github: FakeGitHub, db: Database) -> None:
    data = comment(github, "@forgecrew please also handle None")
    post(client, data)
    wait_for(lambda: finished(db, data["comment"]["id"]), what="the request")
    with db.session() as session:
        [task] = session.scalars(select(Task)).all()
    assert task.issue_number == 7 and task.requested_by == "maintainer"
    assert "Steps: run with ''" in task.body and "please also handle None" in task.body
    assert f"task {task.id} is queued" in replies(github)[0]


def test_a_coordinator_that_died_leaves_the_command_to_the_reconciler_sweep(
        commands_settings: Settings, github: FakeGitHub, db: Database) -> None:
    app = create_app(commands_settings, run_reconciler=False)
    app.state.commands.submit = lambda command_id: None  # the process dies right after the commit
    data = comment(github, "/forgecrew status")
    with TestClient(app) as client:
        post(client, data)
        assert command_row(db, data["comment"]["id"]).state == "pending"
        row_id = command_row(db, data["comment"]["id"]).id
        assert app.state.commands.sweep() == []  # too fresh: the pool's to run
        with db.session() as session:  # as if recorded a while ago
            row = session.get(CommentCommand, row_id)
            assert row is not None
            row.created_at -= timedelta(seconds=60)
        assert app.state.commands.sweep() == [row_id]
    assert command_row(db, data["comment"]["id"]).state == "done"
    assert len(replies(github)) == 1


@pytest.mark.parametrize("text, expected", [
    ("/forgecrew retry", ("retry", "")),
    ("Thanks!\r\n/forgecrew  route   frontend", ("route", "frontend")),
    ("/FORGECREW status", None),
    ("~~~\n/forgecrew cancel\n~~~", None),
    ("    /forgecrew cancel", None),
    ("\u202e/forgecrew cancel", None),
    ("\uff0fforgecrew cancel", None),
    ("mail a@forgecrew.dev", None),
    ("thanks @forgecrew!", None),
    ("hey @forgecrew, add a test\u200b for it", ("request", "add a test for it")),
    ("x" * 70_000 + "\n/forgecrew cancel", None),
    ("@forgecrew rename `add` to `plus`", ("request", "rename `add` to `plus`")),  # code it names is kept
    ("see `@forgecrew fix it` in the docs", None),
    ("`x` /forgecrew cancel", None),
    ("`/forgecrew` cancel", None),
    ("<!--\n/forgecrew retry\n-->", None),  # hidden on GitHub: never a command
    ("<!-- @forgecrew do it -->", None),
    ("<!-- unclosed\n/forgecrew retry", None),
    ("looks fine <!-- x -->\n/forgecrew retry", ("retry", "")),
    ("> quoted\n/forgecrew retry", None),  # GitHub shows the second line inside the quote
    ("> quoted\n\n/forgecrew retry", ("retry", "")),
    ("> quoted\n```\n/forgecrew retry\n```", None),  # a fence after a quote is code, not prose
])
def test_parse_reads_only_what_a_person_wrote_as_prose(text: str, expected: tuple[str, str] | None) -> None:
    command = parse(text)
    assert (None if command is None else (command.name, command.argument)) == expected
