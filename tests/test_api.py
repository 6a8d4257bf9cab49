"""The REST API on a real PostgreSQL and Redis broker: auth, listing, detail, OpenAPI, writes
through coordinator.operations, and /api/v1/agents with a real Celery worker process."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select

from common.celery_app import message_id
from common.db import Database
from common.forge.local import LocalForge
from common.models import Task
from common.settings import Settings
from common.states import TaskState
from common.transitions import transition
from coordinator.app import create_app
from tests.conftest import settings_env
from tests.factories import make_task
from tests.fakes.anthropic_server import FakeAnthropic
from tests.sample_repo import ISSUE_TITLE, fixing_script
from tests.support import Process, queue_key, start_worker, wait_for

TOKEN = "test-api-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def make_client(make_settings: Callable[..., Settings], db: Database) -> Iterator[Callable[..., TestClient]]:
    """An in-process coordinator (its lifespan, and so its worker-event thread, running)."""
    clients: list[TestClient] = []

    def make(settings: Settings | None = None, **overrides: Any) -> TestClient:
        settings = settings or make_settings(**{"api_token": TOKEN, **overrides})
        client = TestClient(create_app(settings, run_reconciler=False))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def set_state(db: Database, task_id: int, *states: TaskState) -> None:
    with db.session() as session:
        task = session.get(Task, task_id)
        for state in states:
            transition(session, task, state, actor="test")


def queued_message_ids(broker_url: str, queue: str) -> list[str]:
    """Ids of the messages waiting on a queue of the real Redis broker."""
    client = redis.Redis.from_url(broker_url)
    return [json.loads(raw)["headers"]["id"] for raw in client.lrange(queue_key(queue), 0, -1)]


# ---- auth ------------------------------------------------------------------------------------------------

CALLS = [("get", "/api/v1/tasks"), ("get", "/api/v1/tasks/1"), ("post", "/api/v1/tasks"),
         ("post", "/api/v1/tasks/1/retry"), ("post", "/api/v1/tasks/1/cancel"), ("get", "/api/v1/agents")]


def test_without_a_configured_token_every_call_is_refused(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_token=None)
    for method, path in CALLS:
        response = client.request(method, path, headers=AUTH, json={"repo": "acme/app", "title": "x"})
        assert response.status_code == 503, (path, response.text)
        assert "FORGECREW_API_TOKEN" in response.json()["detail"]


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "])
def test_a_missing_or_wrong_token_is_401(client: TestClient, db: Database, header: str | None) -> None:
    make_task(db)
    headers = {"Authorization": header} if header else {}
    for method, path in CALLS:
        response = client.request(method, path, headers=headers, json={"repo": "acme/app", "title": "x"})
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
    with db.session() as session:  # nothing was written by the refused calls
        assert session.scalar(select(func.count()).select_from(Task)) == 1
        assert session.get(Task, 1).state == "triaged"


def test_openapi_describes_paths_models_and_the_bearer_scheme(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/api/v1/tasks", "/api/v1/tasks/{task_id}", "/api/v1/tasks/{task_id}/retry",
            "/api/v1/tasks/{task_id}/cancel", "/api/v1/agents", "/metrics"} <= set(spec["paths"])
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "The value of FORGECREW_API_TOKEN, as "
        "`Authorization: Bearer <token>`."}
    for path, operations in spec["paths"].items():
        if path.startswith("/api/v1"):
            for operation in operations.values():
                assert operation["security"] == [{"bearer": []}], path
                assert "401" in operation["responses"] and "503" in operation["responses"]
    listing = spec["paths"]["/api/v1/tasks"]["get"]
    assert listing["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TaskPage"}
    assert {param["name"] for param in listing["parameters"]} == {"state", "repo", "specialty", "limit", "offset"}
    detail = spec["components"]["schemas"]["TaskDetail"]["properties"]
    assert {"events", "runs", "usage", "state", "repo", "issue_number", "branch", "pr_url", "attempt"} <= set(detail)
    assert "201" in spec["paths"]["/api/v1/tasks"]["post"]["responses"]
    assert client.get("/docs").status_code == 200


# ---- reads -----------------------------------------------------------------------------------------------


def test_list_filters_and_pages_match_the_database(client: TestClient, db: Database) -> None:
    for number in range(1, 8):
        make_task(db, repo="acme/app" if number % 2 else "acme/web", issue_number=number,
                  specialty="backend" if number < 5 else "frontend")
    set_state(db, 2, TaskState.QUEUED, TaskState.FAILED)
    set_state(db, 6, TaskState.CANCELLED)
    cases: list[tuple[dict[str, Any], Any]] = [
        ({}, True),
        ({"state": "triaged"}, Task.state == "triaged"),
        ({"repo": "acme/web"}, Task.repo == "acme/web"),
        ({"specialty": "frontend", "repo": "acme/app"}, (Task.specialty == "frontend") & (Task.repo == "acme/app")),
        ({"state": "failed", "specialty": "backend"}, (Task.state == "failed") & (Task.specialty == "backend")),
    ]
    for params, condition in cases:
        with db.session() as session:
            expected = list(session.scalars(select(Task.id).where(condition).order_by(Task.id.desc())))
        page = client.get("/api/v1/tasks", params=params, headers=AUTH).json()
        assert [item["id"] for item in page["items"]] == expected, params
        assert page["total"] == len(expected) and page["next_offset"] is None
    seen, offset = [], 0
    while offset is not None:
        page = client.get("/api/v1/tasks", params={"limit": 3, "offset": offset}, headers=AUTH).json()
        assert page["total"] == 7 and page["limit"] == 3 and len(page["items"]) <= 3
        seen += [item["id"] for item in page["items"]]
        offset = page["next_offset"]
    assert seen == [7, 6, 5, 4, 3, 2, 1]
    item = client.get("/api/v1/tasks", params={"state": "failed"}, headers=AUTH).json()["items"][0]
    assert {"id", "repo", "issue_number", "specialty", "state", "branch", "pr_url", "attempt"} <= set(item)
    assert (item["id"], item["repo"], item["state"]) == (2, "acme/web", "failed")


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 501}, {"offset": -1}, {"state": "sleeping"}])
def test_bad_list_parameters_are_422(client: TestClient, params: dict[str, Any]) -> None:
    assert client.get("/api/v1/tasks", params=params, headers=AUTH).status_code == 422


def test_limit_500_is_allowed(client: TestClient, db: Database) -> None:
    make_task(db)
    assert client.get("/api/v1/tasks", params={"limit": 500}, headers=AUTH).json()["total"] == 1


def test_task_detail_has_events_runs_and_usage(client: TestClient, db: Database) -> None:
    from common.models import TaskRun

    task_id = make_task(db, title="Fix the login page", body="It 500s")
    with db.session() as session:
        session.add(TaskRun(task_id=task_id, attempt=1, worker="w1", model="claude-sonnet-4-6", outcome="failed",
                            input_tokens=120, output_tokens=30, cost_usd=0.01, sandbox="bubblewrap"))
        task = session.get(Task, task_id)
        task.input_tokens, task.output_tokens, task.cost_usd = 120, 30, 0.01
    data = client.get(f"/api/v1/tasks/{task_id}", headers=AUTH).json()
    assert (data["id"], data["title"], data["body"], data["state"]) == (task_id, "Fix the login page", "It 500s",
                                                                        "triaged")
    assert [(e["from_state"], e["to_state"]) for e in data["events"]] == [(None, "pending"), ("pending", "triaged")]
    assert data["events"][0]["actor"] == "test" and data["events"][0]["at"]
    assert data["runs"][0]["worker"] == "w1" and data["runs"][0]["input_tokens"] == 120
    assert data["usage"] == {"input_tokens": 120, "output_tokens": 30, "cache_read_tokens": 0,
                             "cache_write_tokens": 0, "cost_usd": 0.01}
    missing = client.get("/api/v1/tasks/999", headers=AUTH)
    assert missing.status_code == 404 and "999" in missing.json()["detail"]


# ---- writes, through coordinator.operations ---------------------------------------------------------------


def test_submit_creates_the_task_and_its_message_lands_on_the_broker(client: TestClient, db: Database,
                                                                     broker_url: str) -> None:
    response = client.post("/api/v1/tasks", headers=AUTH, json={
        "repo": "acme/app", "title": "Add a dark mode toggle to the settings page", "body": "CSS please",
        "requested_by": "alice"})
    assert response.status_code == 201, response.text
    task = response.json()
    assert (task["repo"], task["issue_number"], task["state"]) == ("acme/app", None, "queued")
    assert task["specialty"] == "frontend"  # triaged by the rules
    assert task["events"][0]["actor"] == "api:alice"
    assert queued_message_ids(broker_url, "frontend") == [message_id(task["id"], 1)]
    with db.session() as session:
        row = session.get(Task, task["id"])
        assert (row.state, row.dispatch_count, row.requested_by) == ("queued", 1, "api:alice")
    chosen = client.post("/api/v1/tasks", headers=AUTH, json={"repo": "acme/app", "title": "x", "specialty": "devops"})
    assert chosen.status_code == 201 and chosen.json()["specialty"] == "devops"
    assert queued_message_ids(broker_url, "devops") == [message_id(chosen.json()["id"], 1)]


@pytest.mark.parametrize(("body", "status"), [
    ({"repo": "acme/app"}, 400),  # neither an issue nor a title
    ({"repo": "acme/app", "title": "x", "specialty": "cobol"}, 400),
    ({"repo": "not a repo", "title": "x"}, 422),
    ({"repo": "acme/app", "issue": 0}, 422),
    ({"title": "x"}, 422),
])
def test_submit_refuses_bad_input(client: TestClient, db: Database, broker_url: str, body: dict[str, Any],
                                  status: int) -> None:
    response = client.post("/api/v1/tasks", headers=AUTH, json=body)
    assert response.status_code == status, response.text
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Task)) == 0
    if status == 400:
        assert "detail" in response.json() and isinstance(response.json()["detail"], str)


def test_submit_for_an_issue_reads_the_forge_and_refuses_a_second_active_task(
        make_client: Callable[..., TestClient], forge_settings: Settings, forge: LocalForge, db: Database,
        broker_url: str) -> None:
    client = make_client(forge_settings.model_copy(update={"api_token": SecretStr(TOKEN)}))
    response = client.post("/api/v1/tasks", headers=AUTH, json={"repo": "acme/calc", "issue": 1})
    assert response.status_code == 201, response.text
    assert (response.json()["title"], response.json()["issue_number"]) == (ISSUE_TITLE, 1)
    again = client.post("/api/v1/tasks", headers=AUTH, json={"repo": "acme/calc", "issue": 1})
    assert again.status_code == 409 and f"task {response.json()['id']}" in again.json()["detail"]
    missing = client.post("/api/v1/tasks", headers=AUTH, json={"repo": "acme/calc", "issue": 99})
    assert missing.status_code == 502, missing.text


def test_retry_requeues_a_failed_task_and_sends_it(client: TestClient, db: Database, broker_url: str) -> None:
    task_id = make_task(db, specialty="testing")
    set_state(db, task_id, TaskState.QUEUED, TaskState.FAILED)
    in_flight = client.post(f"/api/v1/tasks/{make_task(db, issue_number=2)}/retry", headers=AUTH)
    assert in_flight.status_code == 409 and "triaged" in in_flight.json()["detail"]
    response = client.post(f"/api/v1/tasks/{task_id}/retry", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "queued"
    assert response.json()["events"][-1]["actor"] == "api"
    assert queued_message_ids(broker_url, "testing") == [message_id(task_id, 1)]
    assert client.post("/api/v1/tasks/999/retry", headers=AUTH).status_code == 404


def test_cancel_records_the_reason_and_refuses_a_finished_task(client: TestClient, db: Database) -> None:
    task_id = make_task(db)
    response = client.post(f"/api/v1/tasks/{task_id}/cancel", headers=AUTH, json={"reason": "duplicate of #7"})
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    last = response.json()["events"][-1]
    assert (last["to_state"], last["actor"], last["detail"]) == ("cancelled", "api", "duplicate of #7")
    again = client.post(f"/api/v1/tasks/{task_id}/cancel", headers=AUTH)
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]
    no_body = client.post(f"/api/v1/tasks/{make_task(db, issue_number=2)}/cancel", headers=AUTH)
    assert no_body.status_code == 200 and no_body.json()["events"][-1]["detail"] == "cancelled while triaged"
    assert client.post("/api/v1/tasks/999/cancel", headers=AUTH).status_code == 404


# ---- agents, with a real worker process ----------------------------------------------------------------


def agent_named(client: TestClient, prefix: str, **params: Any) -> dict[str, Any] | None:
    agents = client.get("/api/v1/agents", headers=AUTH, params=params).json()["agents"]
    return next((agent for agent in agents if agent["hostname"].startswith(prefix)), None)


@pytest.mark.integration
def test_agents_lists_a_real_worker_its_queue_and_its_running_task(
        make_client: Callable[..., TestClient], forge_settings: Settings, forge: LocalForge, model: FakeAnthropic,
        db: Database, tmp_path: Path, processes: list[Process]) -> None:
    client = make_client(forge_settings.model_copy(update={"api_token": SecretStr(TOKEN)}))
    assert client.get("/api/v1/agents", headers=AUTH).json() == {"agents": [], "online": 0, "inspected": True}
    worker = start_worker(settings_env(forge_settings), tmp_path, "backend")
    processes.append(worker)
    agent = wait_for(lambda: agent_named(client, "backend-"), timeout=30, what="worker listed")
    assert agent["online"] and agent["queues"] == ["backend"] and agent["active"] == []
    assert agent["last_heartbeat"] and agent["version"]
    quick = wait_for(lambda: agent_named(client, "backend-", inspect="false"), timeout=10, what="heartbeat")
    assert quick["online"] and quick["queues"] is None and quick["active"] is None
    script = fixing_script()
    script[0].delay = 6.0  # the model thinks for a while: the task is running meanwhile
    model.add(*script)
    task_id = client.post("/api/v1/tasks", headers=AUTH, json={"repo": "acme/calc", "issue": 1,
                                                               "specialty": "backend"}).json()["id"]
    busy = wait_for(lambda: (a := agent_named(client, "backend-")) and a["active"] and a, timeout=60,
                    what="task shown as active")
    assert [(task["task_id"], task["message_id"]) for task in busy["active"]] == [(task_id, message_id(task_id, 1))]
    assert busy["active_count"] == 1 and busy["active"][0]["started_at"]
    wait_for(lambda: client.get(f"/api/v1/tasks/{task_id}", headers=AUTH).json()["state"] == "pr_open",
             timeout=90, what="task done")
    worker.stop()
    gone = wait_for(lambda: (a := agent_named(client, "backend-", inspect="false")) and not a["online"] and a,
                    timeout=30, what="worker offline")
    assert gone["last_heartbeat"]
    assert client.get("/api/v1/agents", headers=AUTH).json()["online"] == 0
