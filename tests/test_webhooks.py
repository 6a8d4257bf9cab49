"""Webhook rules against real PostgreSQL and a real Redis broker (the app in-process)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from common.db import Database
from common.models import Task, WebhookDelivery
from common.settings import Settings
from coordinator.app import create_app
from tests.support import headers, labeled_issue, payload, queue_key, raw_payload

pytestmark = pytest.mark.integration


@pytest.fixture
def client(settings: Settings, db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(settings, run_reconciler=False)) as test_client:
        yield test_client


def post(client: TestClient, event: str, data: dict[str, Any] | bytes, **kwargs: Any):  # type: ignore[no-untyped-def]
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    response = client.post("/webhooks/github", content=body, headers=headers(event, body, **kwargs))
    assert client.app.state.services.sender.wait_idle()  # the send goes out after the answer
    return response


def queued_messages(settings: Settings, queue: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in redis.Redis.from_url(settings.broker_url).lrange(queue_key(queue), 0, -1)]


def tasks(db: Database) -> list[Task]:
    with db.session() as session:
        return list(session.scalars(select(Task).order_by(Task.id)))


def delivery(db: Database, delivery_id: str) -> WebhookDelivery:
    with db.session() as session:
        return session.scalars(select(WebhookDelivery).where(WebhookDelivery.delivery_id == delivery_id)).one()


def test_ping_answers_and_is_recorded(client: TestClient, db: Database) -> None:
    body = raw_payload("ping", "payload")
    response = client.post("/webhooks/github", content=body, headers=headers("ping", body, delivery="ping-1"))
    assert response.status_code == 200
    assert delivery(db, "ping-1").outcome.startswith("pong")


def test_missing_or_wrong_signature_is_401_and_records_nothing(client: TestClient, db: Database) -> None:
    body = json.dumps(labeled_issue()).encode()
    bad = headers("issues", body, secret="not-the-secret")
    assert client.post("/webhooks/github", content=body, headers=bad).status_code == 401
    missing = {k: v for k, v in headers("issues", body).items() if k != "X-Hub-Signature-256"}
    assert client.post("/webhooks/github", content=body, headers=missing).status_code == 401
    tampered = headers("issues", body)
    assert client.post("/webhooks/github", content=body + b"\n", headers=tampered).status_code == 401
    with db.session() as session:
        assert session.scalars(select(WebhookDelivery)).all() == []
    assert tasks(db) == []


def test_labeled_issue_creates_triaged_task_and_enqueues_it(client: TestClient, db: Database,
                                                             settings: Settings) -> None:
    response = post(client, "issues", labeled_issue("forgecrew:backend"), delivery="d-1")
    assert response.status_code == 202, response.text
    [task] = tasks(db)
    assert (task.repo, task.issue_number, task.specialty, task.state) == ("Codertocat/Hello-World", 1, "backend",
                                                                            "queued")
    assert task.requested_by == "Codertocat"
    with db.session() as session:
        events = [(e.from_state, e.to_state) for e in session.get(Task, task.id).events]
    assert events == [(None, "pending"), ("pending", "triaged"), ("triaged", "queued")]
    [message] = queued_messages(settings, "backend")
    assert message["headers"]["task"] == "forgecrew.run_task"
    assert message["headers"]["timelimit"] == [settings.default_time_limit, settings.default_soft_time_limit]
    assert delivery(db, "d-1").task_id == task.id


def test_trigger_label_uses_rules_to_route(client: TestClient, db: Database) -> None:
    data = labeled_issue("forgecrew", title="Flaky test in tests/test_api.py", body="fails one run in ten")
    assert post(client, "issues", data).status_code == 202
    [task] = tasks(db)
    assert task.specialty == "testing"
    assert "tests/test_api.py" in task.triage_reason


def test_redelivery_creates_nothing_new(client: TestClient, db: Database, settings: Settings) -> None:
    data = labeled_issue()
    first = post(client, "issues", data, delivery="same-id")
    again = post(client, "issues", data, delivery="same-id")
    assert first.status_code == 202
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert len(tasks(db)) == 1
    assert len(queued_messages(settings, "general")) == 1


def test_second_trigger_while_active_is_recorded_not_duplicated(client: TestClient, db: Database) -> None:
    post(client, "issues", labeled_issue("forgecrew"), delivery="first")
    response = post(client, "issues", labeled_issue("forgecrew:frontend"), delivery="second")
    assert response.status_code == 200
    assert len(tasks(db)) == 1
    assert "already active" in delivery(db, "second").outcome


@pytest.mark.parametrize("association,expected", [("OWNER", 1), ("MEMBER", 1), ("COLLABORATOR", 1),
                                                  ("CONTRIBUTOR", 0), ("NONE", 0), ("FIRST_TIME_CONTRIBUTOR", 0)])
def test_opened_with_label_needs_trusted_author(client: TestClient, db: Database, association: str,
                                                expected: int) -> None:
    data = payload("issues", "opened")
    data["issue"]["labels"] = [{"name": "forgecrew", "id": 1, "color": "ffffff", "default": False}]
    data["issue"]["author_association"] = association
    response = post(client, "issues", data, delivery=f"open-{association}")
    assert len(tasks(db)) == expected
    assert response.status_code == (202 if expected else 200)
    if not expected:
        assert delivery(db, f"open-{association}").outcome.startswith("untrusted")


def test_opened_without_label_is_ignored(client: TestClient, db: Database) -> None:
    data = payload("issues", "opened")
    assert post(client, "issues", data, delivery="nolabel").status_code == 200
    assert tasks(db) == []
    assert delivery(db, "nolabel").outcome == "ignored: issue has no forgecrew label"


def test_reopened_with_label_triggers(client: TestClient, db: Database) -> None:
    data = payload("issues", "opened")
    data["action"] = "reopened"
    data["issue"]["labels"] = [{"name": "forgecrew:devops"}]
    assert post(client, "issues", data).status_code == 202
    assert tasks(db)[0].specialty == "devops"


@pytest.mark.parametrize("label", ["bug", "forgecrew:queued", "forgecrew:pr-open", "forgecrew:nosuch"])
def test_non_trigger_labels_are_ignored(client: TestClient, db: Database, label: str) -> None:
    response = post(client, "issues", labeled_issue(label), delivery=f"lbl-{label}")
    assert response.status_code == 200
    assert tasks(db) == []
    outcome = delivery(db, f"lbl-{label}").outcome
    assert outcome.startswith("ignored")
    if label == "forgecrew:nosuch":
        assert "unknown specialty 'nosuch'" in outcome


def test_bot_senders_never_trigger_work(client: TestClient, db: Database) -> None:
    data = labeled_issue()
    data["sender"] = {**data["sender"], "login": "forgecrew[bot]", "type": "Bot"}
    assert post(client, "issues", data, delivery="bot").status_code == 200
    assert tasks(db) == []
    assert delivery(db, "bot").outcome.startswith("ignored: sent by bot")


def test_repo_outside_allowlist_is_ignored(client: TestClient, db: Database) -> None:
    data = labeled_issue(repo="evil/repo")
    assert post(client, "issues", data, delivery="evil").status_code == 200
    assert tasks(db) == []
    assert "not in FORGECREW_REPO_ALLOWLIST" in delivery(db, "evil").outcome


def test_unknown_events_and_actions_are_recorded_and_ignored(client: TestClient, db: Database) -> None:
    assert post(client, "pull_request", payload("pull_request", "opened"), delivery="pr").status_code == 200
    assert post(client, "issues", payload("issues", "edited"), delivery="edit").status_code == 200
    assert post(client, "installation", payload("installation", "created"), delivery="inst").status_code == 200
    assert delivery(db, "pr").outcome == "ignored: pull_request.opened is not handled"
    assert delivery(db, "edit").outcome == "ignored: issues.edited is not handled"
    assert tasks(db) == []


def test_malformed_json_is_400_and_recorded(client: TestClient, db: Database) -> None:
    response = post(client, "issues", b'{"action": "labeled", ', delivery="broken")
    assert response.status_code == 400
    assert "malformed JSON" in response.json()["error"]
    assert delivery(db, "broken").outcome.startswith("rejected: malformed JSON")
    assert post(client, "issues", b"[1, 2]", delivery="array").status_code == 400


def test_missing_delivery_header_is_400(client: TestClient) -> None:
    body = json.dumps(labeled_issue()).encode()
    sent = {k: v for k, v in headers("issues", body).items() if k != "X-GitHub-Delivery"}
    assert client.post("/webhooks/github", content=body, headers=sent).status_code == 400


def test_oversized_body_is_413(make_settings, db: Database) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(max_webhook_bytes=1000)
    with TestClient(create_app(settings, run_reconciler=False)) as client:
        body = raw_payload("issues", "labeled")
        assert len(body) > 1000
        response = client.post("/webhooks/github", content=body, headers=headers("issues", body))
        assert response.status_code == 413
    assert tasks(db) == []


def test_pull_request_issue_events_are_ignored(client: TestClient, db: Database) -> None:
    data = labeled_issue()
    data["issue"]["pull_request"] = {"url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/1"}
    assert post(client, "issues", data).status_code == 200
    assert tasks(db) == []


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_readiness_fails_when_broker_unreachable(make_settings, db: Database) -> None:  # type: ignore[no-untyped-def]
    from tests.support import free_port

    settings = make_settings(broker_url=f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(settings, run_reconciler=False)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "ok"
    assert response.json()["checks"]["broker"].startswith("error")



@pytest.fixture(params=["postgresql", "sqlite"])
def any_backend(request: pytest.FixtureRequest, make_settings, db: Database, tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    """Settings on each supported database (the PostgreSQL one is emptied by `db`)."""
    if request.param == "postgresql":
        return make_settings()
    from common import migrate

    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'hooks.db'}")
    migrate.upgrade(settings)
    return settings


def test_only_a_repeated_delivery_id_is_a_duplicate(any_backend: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """Another integrity error is a fault: 500, logged, nothing recorded, so GitHub's redelivery is handled."""
    from common.models import TaskEvent
    from coordinator.webhooks.router import Delivery, Outcome

    broken = True

    def handler(delivery: Delivery) -> Outcome:
        if broken:  # a bug that writes a row breaking a foreign key
            delivery.session.add(TaskEvent(task_id=987654, to_state="queued", actor="bug"))
            delivery.session.flush()
        return Outcome("handled")

    app = create_app(any_backend, run_reconciler=False)
    app.state.services.router.on("forgecrew_test", None)(handler)
    data = {"action": "poke", "sender": {"login": "octocat", "type": "User"}}
    with TestClient(app, raise_server_exceptions=False) as client:
        with caplog.at_level("ERROR", logger="coordinator.webhooks.endpoint"):
            failed = post(client, "forgecrew_test", data, delivery="fault-1")
        assert failed.status_code == 500, failed.text
        [logged] = caplog.records
        assert "delivery fault-1 (forgecrew_test) failed" in logged.getMessage() and logged.exc_info
        database = Database(any_backend)
        with database.session() as session:
            assert session.scalars(select(WebhookDelivery)).all() == []
        broken = False
        redelivered = post(client, "forgecrew_test", data, delivery="fault-1")
        assert redelivered.status_code == 200 and redelivered.json()["status"] == "handled"
        again = post(client, "forgecrew_test", data, delivery="fault-1")
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
        database.dispose()


@pytest.mark.parametrize("association,expected", [("CONTRIBUTOR", 1), ("OWNER", 0), ("NONE", 0)])
def test_trusted_associations_setting_decides_who_may_open_with_the_label(
        make_settings, db: Database, association: str, expected: int) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(trusted_associations=["contributor"])  # lower case is accepted too
    data = payload("issues", "opened")
    data["issue"]["labels"] = [{"name": "forgecrew:backend"}]
    data["issue"]["author_association"] = association
    with TestClient(create_app(settings, run_reconciler=False)) as client:
        response = post(client, "issues", data, delivery=f"assoc-{association}")
    assert response.status_code == (202 if expected else 200)
    assert len(tasks(db)) == expected
    if not expected:
        assert delivery(db, f"assoc-{association}").outcome == (
            f"untrusted: Codertocat is {association}; a maintainer must add the label")


def test_a_bot_is_recognised_by_its_login_alone(client: TestClient, db: Database) -> None:
    """Some Apps' events carry sender.type User; the [bot] suffix still marks them."""
    data = labeled_issue("forgecrew:backend")
    data["sender"] = {**data["sender"], "login": "some-app[bot]", "type": "User"}
    assert post(client, "issues", data, delivery="bot-suffix").status_code == 200
    assert tasks(db) == []
    assert delivery(db, "bot-suffix").outcome == "ignored: sent by bot some-app[bot]"


def test_labelling_a_closed_issue_starts_nothing(client: TestClient, db: Database) -> None:
    """A closed issue is finished business; reopening it (with the label) is how to ask again."""
    data = labeled_issue("forgecrew:backend")
    data["issue"]["state"] = "closed"
    data["issue"]["closed_at"] = "2019-05-15T15:30:00Z"
    assert post(client, "issues", data, delivery="closed").status_code == 200
    assert tasks(db) == []
    assert delivery(db, "closed").outcome == "ignored: issue is closed"
    data["action"] = "reopened"
    data["issue"]["state"], data["issue"]["closed_at"] = "open", None
    assert post(client, "issues", data, delivery="reopened").status_code == 202
    assert len(tasks(db)) == 1


class ConnectionCounter:
    """A TCP server that only counts the connections made to it, for 'nothing called out' checks."""

    def __init__(self) -> None:
        import socket
        import threading

        self.count = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._server.accept()
            except TimeoutError:
                continue
            self.count += 1
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._server.setblocking(False)
        while True:  # connections still waiting in the backlog count too
            try:
                self._server.accept()[0].close()
            except BlockingIOError:
                break
            self.count += 1
        self._server.close()


def test_the_request_path_never_calls_github(make_settings, db: Database) -> None:  # type: ignore[no-untyped-def]
    """Intake answers from the payload alone: GitHub's API (and its rate limits) stay off the hot path."""
    github = ConnectionCounter()
    try:
        url = f"http://127.0.0.1:{github.port}"
        settings = make_settings(github_token="ghp_" + "x" * 36, github_api_url=url,
                                 clone_url_template=url + "/{full_name}.git")
        with TestClient(create_app(settings, run_reconciler=False)) as client:
            for name, data in (("labeled", labeled_issue("forgecrew")), ("opened", payload("issues", "opened")),
                               ("edited", payload("issues", "edited"))):
                if name == "opened":
                    data["issue"]["labels"] = [{"name": "forgecrew:frontend"}]
                    data["issue"]["number"] = 2
                assert post(client, "issues", data).status_code in (200, 202)
            assert post(client, "issue_comment", payload("issue_comment", "created")).status_code == 200
        assert len(tasks(db)) == 2  # the work was taken in, and dispatched (background task) too
        assert len(queued_messages(settings, "general")) + len(queued_messages(settings, "frontend")) == 2
    finally:
        github.close()
    assert github.count == 0


def _wrong_shape(change: str) -> bytes:
    """A labelled issue whose JSON parses but holds the wrong type where forgecrew reads."""
    data = labeled_issue("forgecrew:backend")
    if change == "repository":
        data["repository"] = "Codertocat/Hello-World"
    elif change == "number":
        data["issue"]["number"] = "abc"
    elif change == "title":
        data["issue"]["title"] = {"text": "a dict as the title"}
    elif change == "labels":
        data["issue"]["labels"] = "forgecrew"
    elif change == "deep":
        return json.dumps(data).encode()[:-1] + b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return json.dumps(data).encode()


@pytest.mark.parametrize("change,reason", [
    ("repository", "repository: Input should be a valid dictionary"),
    ("number", "issue.number: Input should be a valid integer"),
    ("title", "issue.title: Input should be a valid string"),
    ("labels", "issue.labels: Input should be a valid list"),
    ("deep", "nested too deeply"),
])
def test_a_signed_delivery_of_the_wrong_shape_is_400_and_its_redelivery_is_handled(
        client: TestClient, db: Database, change: str, reason: str) -> None:
    broken = post(client, "issues", _wrong_shape(change), delivery=f"shape-{change}")
    assert broken.status_code == 400, broken.text
    assert reason in broken.json()["error"]
    row = delivery(db, f"shape-{change}")
    assert row.outcome.startswith("rejected: ") and reason in row.outcome
    assert post(client, "issues", _wrong_shape(change), delivery=f"shape-{change}").status_code == 400  # again
    fixed = post(client, "issues", labeled_issue("forgecrew:backend"), delivery=f"shape-{change}")
    assert fixed.status_code == 202, fixed.text  # the same id, now well formed: handled, no duplicate
    [task] = tasks(db)
    assert delivery(db, f"shape-{change}").task_id == task.id
    assert post(client, "issues", labeled_issue("forgecrew:backend"),
                delivery=f"shape-{change}").json()["status"] == "duplicate"


def test_a_malformed_json_delivery_can_be_redelivered(client: TestClient, db: Database) -> None:
    assert post(client, "issues", b'{"action": "labeled", ', delivery="truncated").status_code == 400
    assert post(client, "issues", labeled_issue(), delivery="truncated").status_code == 202
    assert len(tasks(db)) == 1


def _form(data: dict[str, Any]) -> bytes:
    from urllib.parse import urlencode

    return urlencode({"payload": json.dumps(data)}).encode()


def _post_form(client: TestClient, body: bytes, delivery_id: str, *, signed: bytes | None = None):  # type: ignore[no-untyped-def]
    sent = headers("issues", body if signed is None else signed, delivery=delivery_id)
    sent["Content-Type"] = "application/x-www-form-urlencoded"
    return client.post("/webhooks/github", content=body, headers=sent)


def test_a_form_encoded_delivery_is_handled_like_json(client: TestClient, db: Database, settings: Settings) -> None:
    """GitHub's other content type: `payload=<urlencoded JSON>`, signed over the raw body."""
    body = _form(labeled_issue("forgecrew:frontend"))
    response = _post_form(client, body, "form-1")
    assert response.status_code == 202, response.text
    [task] = tasks(db)
    assert (task.repo, task.issue_number, task.specialty) == ("Codertocat/Hello-World", 1, "frontend")
    assert len(queued_messages(settings, "frontend")) == 1
    assert _post_form(client, body, "form-1").json()["status"] == "duplicate"


def test_a_form_encoded_delivery_is_verified_on_its_raw_body(client: TestClient, db: Database) -> None:
    data = labeled_issue()
    signed_json = json.dumps(data).encode()  # a signature over the decoded payload is not GitHub's
    assert _post_form(client, _form(data), "form-sig", signed=signed_json).status_code == 401
    assert _post_form(client, b"payload=%7B%22action", "form-bad").status_code == 400
    assert delivery(db, "form-bad").outcome.startswith("rejected: malformed JSON")
    assert _post_form(client, b"other=1", "form-empty").status_code == 400
    assert tasks(db) == []
