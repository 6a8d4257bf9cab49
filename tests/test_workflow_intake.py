"""Workflows at intake, through the webhook endpoint: several labels make one; a label added later adds a step."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from common.celery_app import message_id
from common.db import Database
from common.models import Task, WorkflowStep
from common.settings import Settings
from coordinator.app import create_app
from tests.support import headers, labeled_issue, queue_key

pytestmark = pytest.mark.integration  # PostgreSQL, Redis


TOKEN = "workflow-api-token-0123456789abcdef"


@pytest.fixture
def client(make_settings: Callable[..., Settings], db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(api_token=TOKEN), run_reconciler=False)) as test_client:
        yield test_client


def label(client: TestClient, *names: str) -> dict[str, Any]:
    """issues.labeled for issue 1: `names` are its labels now, the last one just added."""
    data = labeled_issue(names[-1])
    data["issue"]["labels"] = [{**data["label"], "name": name} for name in names]
    body = json.dumps(data).encode()
    response = client.post("/webhooks/github", content=body, headers=headers("issues", body))
    assert response.status_code in (200, 202), response.text
    assert client.app.state.services.sender.wait_idle()
    return response.json()


def messages(settings: Settings, queue: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in redis.Redis.from_url(settings.broker_url).lrange(queue_key(queue), 0, -1)]


def steps(db: Database, task_id: int) -> list[tuple[int, str, str]]:
    with db.session() as session:
        return [(s.position, s.specialty, s.state) for s in session.scalars(
            select(WorkflowStep).where(WorkflowStep.task_id == task_id).order_by(WorkflowStep.position))]


def test_two_specialty_labels_make_one_workflow_sent_as_a_chain(client: TestClient, db: Database,
                                                                 settings: Settings) -> None:
    answer = label(client, "forgecrew:frontend", "forgecrew:backend")
    task_id = answer["task_id"]
    assert answer["status"] == f"task {task_id} created (workflow: backend, frontend)"
    assert steps(db, task_id) == [(0, "backend", "pending"), (1, "frontend", "pending")]
    [message] = messages(settings, "backend")
    assert message["headers"]["id"] == message_id(task_id, 1)
    args, kwargs, embed = json.loads(base64.b64decode(message["body"]))
    assert kwargs == {"task_id": task_id, "step": 0}
    [nxt] = embed["chain"]
    assert (nxt["kwargs"], nxt["options"]["queue"], nxt["options"]["task_id"]) == (
        {"task_id": task_id, "step": 1}, "frontend", message_id(task_id, 2))
    with db.session() as session:
        task = session.get(Task, task_id)
        assert (task.state, task.specialty, task.workflow_step, task.dispatch_count) == ("queued", "backend", 0, 1)


def test_a_label_added_later_adds_a_step_until_the_workflow_has_passed_its_place(
        client: TestClient, db: Database, settings: Settings) -> None:
    task_id = label(client, "forgecrew:frontend")["task_id"]
    assert steps(db, task_id) == []
    added = label(client, "forgecrew:frontend", "forgecrew:backend")  # not started: backend goes first
    assert added["status"].startswith(f"added: task {task_id} is now a workflow of backend → frontend")
    assert steps(db, task_id) == [(0, "backend", "pending"), (1, "frontend", "pending")]
    assert [m["headers"]["id"] for m in messages(settings, "backend")] == [message_id(task_id, 2)]
    with db.session() as session:  # the first step runs now
        session.get(Task, task_id).state = "running"
    assert label(client, "forgecrew:frontend", "forgecrew:backend", "forgecrew:testing")["status"].startswith(
        "added: testing step")
    assert steps(db, task_id)[-1] == (2, "testing", "pending")
    refused = label(client, "forgecrew:frontend", "forgecrew:backend", "forgecrew:testing", "forgecrew:backend")
    assert refused["status"] == f"recorded: task {task_id} already has a backend step"


def test_the_rest_api_lists_a_workflows_steps(client: TestClient, db: Database) -> None:
    task_id = label(client, "forgecrew:testing", "forgecrew:backend")["task_id"]
    response = client.get(f"/api/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    detail = response.json()
    assert detail["workflow_step"] == 0
    assert [(s["position"], s["specialty"], s["state"], s["files"]) for s in detail["steps"]] == [
        (0, "backend", "pending", []), (1, "testing", "pending", [])]
