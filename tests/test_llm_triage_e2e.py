"""LLM triage through intake, PostgreSQL and Redis: the webhook is answered first, the rules are the floor.

The served coordinator runs as a process of its own; FakeAnthropic, in this process, holds the
model's reply behind a gate, so the test sees the delivery answered and committed while the model
is still thinking.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from common.celery_app import make_celery, message_id
from common.db import Database
from common.models import Task, WebhookDelivery
from common.serialize import task_summary
from common.settings import Settings
from coordinator.broker_messages import held_message_ids
from coordinator.llm_triage import TOOL_NAME
from coordinator.services import Services, build_services
from coordinator.webhooks.endpoint import process_delivery
from tests.conftest import settings_env
from tests.fakes.anthropic_server import DEFAULT_KEY, FakeAnthropic, Gate, Reply, Spec, error, text, tool_use
from tests.support import Process, deliver, labeled_issue, start_coordinator, wait_for

pytestmark = pytest.mark.integration
# No label and no rule names a specialty here: the rules send it to general
VAGUE = {"title": "Make the settings screen friendlier", "body": "People get lost in it."}
# The rules send this one to backend
SERVERISH = {"title": "Orders endpoint times out", "body": "The server takes 30 s on large orders."}



def classify(specialties: list[str], confidence: float, reason: str = "a change to a settings page") -> Reply:
    return tool_use(TOOL_NAME, {"specialties": specialties, "confidence": confidence, "reason": reason})


def llm_settings(make_settings: Callable[..., Settings], model: FakeAnthropic, **overrides: Any) -> Settings:
    return make_settings(triage_llm=True, anthropic_api_key=DEFAULT_KEY, anthropic_base_url=model.base_url,
                         **overrides)


def task_row(db: Database, task_id: int) -> Task:
    with db.session() as session:
        task = session.get(Task, task_id)
        assert task is not None
        task.events  # noqa: B018  (loaded before the session closes)
        return task


def in_queue(settings: Settings, task_id: int, queue: str) -> bool:
    """Whether the task's first message waits in `queue` on the Redis broker."""
    return message_id(task_id, 1) in (held_message_ids(make_celery(settings), {queue}) or set())


def test_the_webhook_is_answered_before_the_model_and_the_task_goes_where_it_decided(
        make_settings: Callable[..., Settings], model: FakeAnthropic, db: Database, tmp_path: Any,
        processes: list[Process]) -> None:
    gate = Gate(classify(["frontend"], 0.92))
    model.add(gate)
    settings = llm_settings(make_settings, model)
    coordinator, url = start_coordinator(settings_env(settings), tmp_path)
    processes.append(coordinator)
    try:
        answer = deliver(url, "issues", labeled_issue("forgecrew", number=501, **VAGUE))
        wait_for(gate.reached.is_set, timeout=10, what="the model asked")
        # the model is still thinking: the delivery is answered and committed, the task pending
        assert not gate.opened.is_set()
        task_id = answer["task_id"]
        assert "waiting for LLM triage" in answer["status"]
        held = task_row(db, task_id)
        assert held.state == "pending" and held.triage_confidence is None
        with db.session() as session:
            assert session.query(WebhookDelivery).filter_by(delivery_id=answer["delivery"]).one().task_id == task_id
    finally:
        gate.opened.set()
    wait_for(lambda: task_row(db, task_id).state == "queued", timeout=15, what="task triaged and sent")
    task = task_row(db, task_id)
    assert task.specialty == "frontend" and task.triage_confidence == 0.92
    assert task.triage_reason == "llm triage (claude-haiku-4-5, confidence 0.92): frontend: a change to a settings page"
    assert task.triage_cost_usd is not None and task.triage_cost_usd > 0
    trail = [(e.from_state, e.to_state, e.actor) for e in task.events]
    assert trail[1:] == [("pending", "triaged", "triage"), ("triaged", "queued", "triage")]
    assert in_queue(settings, task_id, "frontend") and not in_queue(settings, task_id, "general")
    [request] = model.message_requests
    assert request.body["tool_choice"] == {"type": "tool", "name": TOOL_NAME}


@pytest.fixture
def services(make_settings: Callable[..., Settings], model: FakeAnthropic, db: Database) -> Iterator[Services]:
    """In-process coordinator parts with LLM triage on and a short model timeout."""
    built = build_services(llm_settings(make_settings, model, triage_timeout_seconds=0.5))
    yield built
    built.triage.stop()
    built.db.dispose()


def intake(services: Services, fields: dict[str, str], number: int) -> int:
    """One signed-off delivery through process_delivery; the pending task's id, not yet classified."""
    body = json.dumps(labeled_issue("forgecrew", number=number, **fields)).encode()
    answer = process_delivery(services, {"x-github-event": "issues", "x-github-delivery": str(uuid.uuid4())}, body)
    assert answer.status == 202 and answer.send is None and answer.triage_id == answer.body["task_id"]
    return answer.triage_id


def test_below_the_threshold_the_rules_decide(services: Services, model: FakeAnthropic, db: Database) -> None:
    model.add(classify(["frontend"], 0.42))
    task_id = intake(services, SERVERISH, 502)
    services.triage.classify(task_id)
    task = task_row(db, task_id)
    assert (task.state, task.specialty, task.triage_confidence) == ("queued", "backend", 0.42)
    assert task.triage_reason.startswith("llm triage: confidence 0.42 < 0.7; rules: rules (score ")
    assert task.triage_cost_usd and task.triage_cost_usd > 0  # the call was made and paid for
    shown = task_summary(task)  # what `forgecrew tasks show --json` and the REST API print
    assert (shown["triage_confidence"], shown["triage_cost_usd"]) == (0.42, task.triage_cost_usd)
    assert in_queue(services.settings, task_id, "backend")


def slow(reply: Reply, seconds: float) -> Reply:
    reply.delay = seconds
    return reply


@pytest.mark.parametrize(("script", "said"), [
    ([text("Surely frontend.")], "malformed answer (expected one classify_issue call, got 0)"),
    ([classify(["astrology"], 0.99)], "malformed answer (no configured specialty named (got 'astrology'))"),
    ([tool_use(TOOL_NAME, {"specialties": ["frontend"], "confidence": "very", "reason": "ui"})],
     "malformed answer (confidence 'very' is not a number)"),
    ([error(500, "api_error", "Internal server error")] * 2, "model error: Anthropic API still failing"),
    ([slow(classify(["frontend"], 0.99), 2.0), slow(classify(["frontend"], 0.99), 2.0)],
     "model error: could not reach the Anthropic API"),
], ids=["no-tool-call", "unknown-specialty", "confidence-not-a-number", "model-500s", "timeouts"])
def test_a_failing_model_leaves_the_decision_to_the_rules(services: Services, model: FakeAnthropic, db: Database,
                                                         script: list[Spec], said: str) -> None:
    model.add(*script)
    task_id = intake(services, SERVERISH, 503)
    services.triage.classify(task_id)
    task = task_row(db, task_id)
    assert (task.state, task.specialty) == ("queued", "backend")  # never lost: sent where the rules say
    assert task.triage_reason.startswith(f"llm triage: {said}"), task.triage_reason
    assert "; rules: rules (score " in task.triage_reason
    triaged = next(e for e in task.events if e.to_state == "triaged")
    assert triaged.actor == "triage" and triaged.detail.startswith(f"backend: llm triage: {said}")
    assert in_queue(services.settings, task_id, "backend")


def test_off_by_default_intake_sends_at_once_and_asks_no_model(make_settings: Callable[..., Settings],
                                                               model: FakeAnthropic, db: Database) -> None:
    services = build_services(make_settings(anthropic_api_key=DEFAULT_KEY, anthropic_base_url=model.base_url))
    try:
        assert services.settings.triage_llm is False
        body = json.dumps(labeled_issue("forgecrew", number=504, **VAGUE)).encode()
        answer = process_delivery(services, {"x-github-event": "issues", "x-github-delivery": "off-1"}, body)
        assert answer.triage_id is None and answer.send is not None  # the sender's fast path, as before
        task = task_row(db, answer.body["task_id"])
        assert (task.state, task.specialty, task.triage_confidence) == ("triaged", "general", None)
        assert services.triage.sweep() == []
    finally:
        services.db.dispose()
    assert model.requests == []


def test_the_reconciler_classifies_what_a_dead_coordinator_left_pending(
        make_settings: Callable[..., Settings], model: FakeAnthropic, db: Database, tmp_path: Any,
        processes: list[Process]) -> None:
    settings = llm_settings(make_settings, model, reaper_interval_seconds=0.3, triage_pending_grace_seconds=1.0)
    dead = build_services(settings)  # a coordinator that committed the delivery, then died before classifying
    try:
        body = json.dumps(labeled_issue("forgecrew", number=505, **VAGUE)).encode()
        task_id = process_delivery(dead, {"x-github-event": "issues", "x-github-delivery": "dies-1"}, body).triage_id
    finally:
        dead.db.dispose()
    assert task_id is not None and task_row(db, task_id).state == "pending"
    model.add(classify(["frontend"], 0.88, "the next coordinator's answer"))
    coordinator, _ = start_coordinator(settings_env(settings), tmp_path)
    processes.append(coordinator)
    wait_for(lambda: task_row(db, task_id).state == "queued", timeout=20, what="the sweep triaging the task")
    task = task_row(db, task_id)
    assert (task.specialty, task.triage_confidence) == ("frontend", 0.88)
    assert task.triage_reason.endswith("frontend: the next coordinator's answer")
    assert [(e.to_state, e.actor) for e in task.events] == [("pending", "webhook:dies-1"), ("triaged", "triage"),
                                                             ("queued", "triage")]
    assert len(model.message_requests) == 1 and in_queue(settings, task_id, "frontend")


def test_several_specialties_make_a_workflow(services: Services, model: FakeAnthropic, db: Database) -> None:
    model.add(classify(["frontend", "backend"], 0.9, "an endpoint and the page that shows it"))
    task_id = intake(services, VAGUE, 506)
    services.triage.classify(task_id)
    with db.session() as session:
        task = session.get(Task, task_id)
        assert task is not None
        steps = [step.specialty for step in task.steps]
        state, specialty = task.state, task.specialty
    assert steps == ["backend", "frontend"]  # workflow_order, not the model's order
    assert (state, specialty) == ("queued", "backend")


def test_without_workflows_the_first_specialty_runs_alone(services: Services, model: FakeAnthropic, db: Database,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from coordinator import workflow

    def unavailable(*args: Any) -> None:
        raise NotImplementedError("workflows are not built yet")

    monkeypatch.setattr(workflow, "create_steps", unavailable)
    model.add(classify(["frontend", "backend"], 0.9, "an endpoint and its page"))
    task_id = intake(services, VAGUE, 507)
    services.triage.classify(task_id)
    task = task_row(db, task_id)
    assert (task.state, task.specialty, task.workflow_step) == ("queued", "frontend", None)
    assert task.triage_reason.endswith("; workflows are not available, so frontend runs alone")


def test_a_task_held_meanwhile_gets_its_decision_and_stays_held(services: Services, model: FakeAnthropic,
                                                               db: Database) -> None:
    from coordinator.admission import hold

    model.add(classify(["frontend"], 0.95))
    task_id = intake(services, VAGUE, 508)
    with db.session() as session:  # admission held it (a dependency) before the model answered
        hold(session, session.get(Task, task_id), "waits for #1")
    services.triage.classify(task_id)
    task = task_row(db, task_id)
    assert (task.state, task.specialty, task.triage_confidence) == ("waiting", "frontend", 0.95)
    assert task.events[-1].to_state == "waiting" and task.events[-1].actor == "triage"
    assert not in_queue(services.settings, task_id, "frontend")
    assert services.triage.classify(task_id) is None  # decided: never asked twice
    assert len(model.message_requests) == 1


def test_a_replayed_delivery_is_classified_at_once(services: Services, model: FakeAnthropic, db: Database) -> None:
    from sqlalchemy import update

    from coordinator.replay import replay_delivery

    model.add(classify(["frontend"], 0.9))
    first = intake(services, VAGUE, 509)
    with db.session() as session:  # the first task ended; the person replays the delivery to start again
        session.execute(update(Task).where(Task.id == first).values(state="cancelled"))
        delivery_id = session.query(WebhookDelivery).filter_by(task_id=first).one().delivery_id
    replayed = replay_delivery(services, delivery_id)["task_id"]
    task = task_row(db, replayed)
    assert replayed != first and (task.state, task.specialty, task.triage_confidence) == ("queued", "frontend", 0.9)


def test_a_workflow_labelled_meanwhile_is_kept(services: Services, model: FakeAnthropic, db: Database) -> None:
    from coordinator import workflow

    model.add(classify(["devops"], 0.97, "a deployment change"))
    task_id = intake(services, VAGUE, 510)
    with db.session() as session:  # a person added forgecrew:backend and forgecrew:frontend before the model answered
        workflow.create_steps(session, session.get(Task, task_id), ["frontend", "backend"], services.settings)
    services.triage.classify(task_id)
    with db.session() as session:
        task = session.get(Task, task_id)
        assert task is not None
        assert ([s.specialty for s in task.steps], task.specialty, task.state) == (
            ["backend", "frontend"], "backend", "queued")
        assert task.triage_reason.startswith("kept the workflow labels added meanwhile; llm triage (")


def test_the_sweep_takes_only_tasks_past_the_grace_and_claims_them(services: Services, model: FakeAnthropic,
                                                                   db: Database) -> None:
    from datetime import timedelta

    model.add(classify(["frontend"], 0.9))
    task_id = intake(services, VAGUE, 511)
    assert services.triage.sweep() == []  # its own coordinator may still be asking the model
    with db.session() as session:  # as if its coordinator had stopped a grace ago
        task = session.get(Task, task_id)
        assert task is not None
        task.updated_at -= timedelta(seconds=services.settings.triage_pending_grace_seconds + 1)
    other = build_services(services.settings)  # a second coordinator's reconciler, sweeping at the same time
    try:
        assert services.triage.sweep() == [task_id]
        assert other.triage.sweep() == []  # claimed for one more grace
    finally:
        other.db.dispose()
    wait_for(lambda: task_row(db, task_id).state == "queued", timeout=10, what="the pool classifying the task")
    assert task_row(db, task_id).specialty == "frontend" and len(model.message_requests) == 1
