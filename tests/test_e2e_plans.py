"""Plans before code end to end: real coordinator and worker processes, PostgreSQL, Redis, Celery, the local
GitHub API server and a scripted model.

An issue labelled `forgecrew:plan` gets a plan, not a change; a writer's `@forgecrew <changes>` gets a
revised plan; a reader's `/forgecrew approve` is refused; a writer's runs the change with the approved
plan in the model's context, to a pull request.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from common.db import Database
from common.models import CommentCommand, Task, TaskRun
from common.settings import Settings
from tests.conftest import settings_env
from tests.fakes.anthropic_server import FakeAnthropic, tool_use
from tests.fakes.github_server import FakeGitHub
from tests.sample_repo import ISSUE_BODY, ISSUE_TITLE, fixing_script
from tests.pipeline_support import github_cluster_settings
from tests.support import (
    Process,
    deliver,
    labeled_issue,
    payload,
    start_coordinator,
    start_worker,
    wait_for,
)
from workers.plans import MARKER

pytestmark = pytest.mark.integration
REPO = "Codertocat/Hello-World"
TOKEN = "ghp_e2ePlansTokenForTheFakeGitHub012345"
FIRST_PLAN = "1. In `calc.py`, make `add` return `a + b`.\n2. Keep `tests/test_calc.py` as it is."
REVISED_PLAN = FIRST_PLAN + "\n3. Add a test that `add(-2, -3)` is `-5`: negatives too."


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub() as server:
        server.add_token(TOKEN)
        server.add_repo(REPO)
        server.add_issue(REPO, 1, ISSUE_TITLE, ISSUE_BODY, labels=("forgecrew:backend", "forgecrew:plan"))
        server.set_permission(REPO, "reviewer", "write")
        server.set_permission(REPO, "drive-by", "read")
        yield server
        assert server.violations == [], "requests outside GitHub's OpenAPI description"


@pytest.fixture
def coordinator_url(make_settings: Callable[..., Settings], github: FakeGitHub, model: FakeAnthropic,
                    tmp_path: Path, processes: list[Process]) -> str:
    """A coordinator and a backend worker against the fake GitHub."""
    settings = github_cluster_settings(make_settings, github.api_url, model, tmp_path, repo=REPO,
                                       token=TOKEN)
    env = settings_env(settings)
    coordinator, url = start_coordinator(env, tmp_path)
    processes.append(coordinator)
    processes.append(start_worker(env, tmp_path, "backend"))
    return url


def say(url: str, github: FakeGitHub, db: Database, text: str, *, author: str) -> CommentCommand:
    """A comment on issue 1, delivered as GitHub would; waits until the coordinator has answered it."""
    stored = github.add_comment(REPO, 1, text, author=author)
    data = copy.deepcopy(payload("issue_comment", "created"))
    data["issue"]["number"] = 1
    data["issue"].pop("pull_request", None)
    data["comment"].update(id=stored["id"], body=text, user={**data["comment"]["user"], "login": author})
    data["sender"] = {**data["sender"], "login": author, "type": "User"}
    assert deliver(url, "issue_comment", data)["status"].startswith("command ")

    def answered() -> CommentCommand | None:
        with db.session() as session:
            row = session.scalars(select(CommentCommand).where(CommentCommand.comment_id == stored["id"])).one()
            return row if row.state in ("done", "refused") else None

    return wait_for(answered, timeout=30, what=f"an answer to {text!r}")


def task_in(db: Database, task_id: int, state: str, processes: list[Process], **fields: Any) -> Task:
    """Wait for the task to reach `state` (with `fields`); a failed task fails the test with the worker's log."""

    def reached() -> Task | None:
        with db.session() as session:
            task = session.get(Task, task_id)
            assert task is not None and task.state != "failed", (task and task.failure_reason,
                                                                  processes[-1].log()[-3000:])
            matches = task.state == state and all(getattr(task, k) == v for k, v in fields.items())
            return task if matches else None

    return wait_for(reached, timeout=40, interval=0.3, what=f"task {task_id} {state} {fields}")


def plan_comments(github: FakeGitHub) -> list[str]:
    return [c["body"] for c in github.issue(REPO, 1).comments if c["body"].startswith(MARKER)]


def first_message(request: Any) -> str:
    content = request.body["messages"][0]["content"]
    return content if isinstance(content, str) else "\n".join(block.get("text", "") for block in content)


def test_a_plan_is_posted_revised_and_approved_before_the_change_runs(
        coordinator_url: str, db: Database, model: FakeAnthropic, github: FakeGitHub,
        processes: list[Process]) -> None:
    url = coordinator_url
    model.add(tool_use("read_file", {"path": "calc.py"}), tool_use("finish", {"summary": FIRST_PLAN}))
    task_id = deliver(url, "issues", labeled_issue("forgecrew:backend", title=ISSUE_TITLE, body=ISSUE_BODY))["task_id"]
    waiting = task_in(db, task_id, "awaiting_approval", processes, plan_revision=1)
    assert (waiting.plan, waiting.lease_owner, waiting.lease_expires_at) == (FIRST_PLAN, None, None)
    [first] = plan_comments(github)
    assert FIRST_PLAN in first and "`/forgecrew approve`" in first
    assert github.pulls(REPO) == []
    assert [t["name"] for t in model.message_requests[0].body["tools"]] == ["list_files", "read_file", "search",
                                                                            "finish"]

    model.add(tool_use("finish", {"summary": REVISED_PLAN}))
    revising = say(url, github, db, "@forgecrew also handle negatives", author="reviewer")
    assert revising.reply and "revising the plan" in revising.reply
    task_in(db, task_id, "awaiting_approval", processes, plan_revision=2)
    revision_request = first_message(model.message_requests[2])
    assert FIRST_PLAN in revision_request and "also handle negatives" in revision_request
    assert len(plan_comments(github)) == 2 and REVISED_PLAN in plan_comments(github)[1]
    assert "revision 2" in plan_comments(github)[1]

    refused = say(url, github, db, "/forgecrew approve", author="drive-by")
    assert refused.state == "refused"
    assert task_in(db, task_id, "awaiting_approval", processes).plan_approved_by is None

    model.add(*fixing_script())
    approving = say(url, github, db, "/forgecrew approve", author="reviewer")
    assert approving.reply and approving.reply.startswith(f"plan approved: task {task_id} is queued")
    done = task_in(db, task_id, "pr_open", processes)
    assert done.plan_approved_by == "reviewer" and github.pulls(REPO)
    last = first_message(model.message_requests[-1])
    assert "## Approved plan" in last and REVISED_PLAN in last
    assert "## Approved plan" not in first_message(model.message_requests[0])
    with db.session() as session:
        outcomes = list(session.scalars(select(TaskRun.outcome).where(TaskRun.task_id == task_id)
                                        .order_by(TaskRun.id)))
    assert outcomes == ["awaiting_approval", "awaiting_approval", "pr_open"]
