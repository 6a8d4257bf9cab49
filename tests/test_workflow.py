"""Workflows' parts on their own: order, steps in PostgreSQL, the canvas, links, follow-up routing, texts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from common import canvas
from common.celery_app import make_celery, message_id
from common.db import Database
from common.models import Task, WorkflowStep
from common.settings import Settings
from common.specialties import profiles, time_limits
from coordinator import workflow
from coordinator.triage import RuleTriage
from tests.factories import make_task
from workers import workflow as steps_kept
from workers.llm import Usage
from workers.prompts import workflow_section
from workers.publish import PublishRequest, pr_body

pytestmark = pytest.mark.integration  # PostgreSQL, Redis


def settings_with(**values: object) -> Settings:
    return Settings(database_url="postgresql://unused/none", broker_url="redis://127.0.0.1:6379/15", **values)


def test_the_default_order_puts_tests_last_and_unlisted_specialties_before_them() -> None:
    settings = settings_with()
    assert workflow.ordered(["testing", "frontend", "backend"], settings) == ["backend", "frontend", "testing"]
    assert workflow.ordered(["testing", "docs", "backend", "backend"], settings) == ["backend", "docs", "testing"]
    custom = settings_with(workflow_order="frontend,backend")
    assert workflow.ordered(["backend", "docs", "frontend"], custom) == ["frontend", "backend", "docs"]


def test_rules_return_every_routing_labels_specialty() -> None:
    decide = RuleTriage(profiles(settings_with()))
    both = decide(title="x", body="", labels=["forgecrew:frontend", "forgecrew", "forgecrew:backend"])
    assert both.specialties == ("frontend", "backend") and "forgecrew:backend" in both.reason
    one = decide(title="x", body="", labels=["forgecrew:devops", "forgecrew:queued"])
    assert (one.specialty, one.specialties) == ("devops", ())


def steps_of(db: Database, task_id: int) -> list[tuple[int, str, str]]:
    with db.session() as session:
        return [(s.position, s.specialty, s.state) for s in workflow.steps_of(session, task_id)]


def test_create_steps_orders_them_and_makes_the_first_current(db: Database, settings: Settings) -> None:
    task_id = make_task(db, specialty="testing")
    with db.session() as session:
        task = session.get(Task, task_id)
        workflow.create_steps(session, task, ["testing", "frontend", "backend"], settings)
    assert steps_of(db, task_id) == [(0, "backend", "pending"), (1, "frontend", "pending"), (2, "testing", "pending")]
    with db.session() as session:
        task = session.get(Task, task_id)
        assert (task.specialty, task.workflow_step) == ("backend", 0)
        workflow.create_steps(session, session.get(Task, make_task(db, issue_number=2)), ["devops"], settings)
    assert steps_of(db, 2) == []  # one specialty: no workflow


def test_a_later_label_adds_a_step_where_the_workflow_can_still_take_it(db: Database, settings: Settings) -> None:
    task_id = make_task(db, specialty="frontend")
    with db.session() as session:
        said = workflow.add_step(session, session.get(Task, task_id), "backend", settings)
    assert said.startswith("added") and steps_of(db, task_id) == [(0, "backend", "pending"),
                                                                  (1, "frontend", "pending")]
    with db.session() as session:  # the first step has run: only later places are open
        task = session.get(Task, task_id)
        assert task.specialty == "backend"
        task.state, task.workflow_step = "queued", 1
        session.scalars(select_step(task_id, 0)).one().state = "done"
    with db.session() as session:
        task = session.get(Task, task_id)
        assert workflow.add_step(session, task, "testing", settings).startswith("added")
        refused = workflow.add_step(session, task, "backend", settings)
    assert "already has a backend step" in refused
    assert steps_of(db, task_id) == [(0, "backend", "done"), (1, "frontend", "pending"), (2, "testing", "pending")]


def test_a_label_for_a_step_already_past_is_not_added(db: Database, settings: Settings) -> None:
    task_id = make_task(db, specialty="frontend")
    with db.session() as session:
        task = session.get(Task, task_id)
        workflow.create_steps(session, task, ["frontend", "testing"], settings)
        task.state = "running"
    with db.session() as session:
        said = workflow.add_step(session, session.get(Task, task_id), "backend", settings)
    assert "past where backend would run" in said
    assert [name for _, name, _ in steps_of(db, task_id)] == ["frontend", "testing"]


def select_step(task_id: int, position: int):  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    return select(WorkflowStep).where(WorkflowStep.task_id == task_id, WorkflowStep.position == position)


def test_retry_resumes_at_the_first_step_not_done(db: Database, settings: Settings) -> None:
    task_id = make_task(db)
    with db.session() as session:
        task = session.get(Task, task_id)
        workflow.create_steps(session, task, ["backend", "frontend", "testing"], settings)
    with db.session() as session:
        session.scalars(select_step(task_id, 0)).one().state = "done"
        session.scalars(select_step(task_id, 1)).one().state = "failed"
        task = session.get(Task, task_id)
        task.workflow_step = 1
        assert workflow.resume(session, task) == "resuming at step 2 of 3 (frontend)"
        assert task.specialty == "frontend"
    assert steps_of(db, task_id) == [(0, "backend", "done"), (1, "frontend", "pending"), (2, "testing", "pending")]


def test_the_chain_holds_the_remaining_steps_each_on_its_queue_with_its_limits(db: Database,
                                                                               settings: Settings) -> None:
    task_id = make_task(db)
    with db.session() as session:
        task = session.get(Task, task_id)
        workflow.create_steps(session, task, ["backend", "frontend", "testing"], settings)
    with db.session() as session:
        session.scalars(select_step(task_id, 0)).one().state = "done"
        session.get(Task, task_id).workflow_step = 1
    with db.session() as session:
        links = canvas.remaining(session, session.get(Task, task_id))
        assert canvas.remaining_by_task(session, [task_id, 999]) == {task_id: links}
    assert links == [(1, "frontend"), (2, "testing")]
    chain = canvas.workflow_chain(make_celery(settings), settings, task_id=task_id, links=links, number=4,
                                  label="acme/app#1 frontend")
    made = [(t.kwargs, t.options["queue"], t.options["task_id"], t.options["time_limit"], t.immutable)
            for t in chain.tasks]
    assert made == [({"task_id": task_id, "step": 1}, "frontend", message_id(task_id, 4),
                     time_limits(settings, "frontend")[1], True),
                    ({"task_id": task_id, "step": 2}, "testing", message_id(task_id, 5),
                     time_limits(settings, "testing")[1], True)]
    assert chain.tasks[1].options["shadow"] == "acme/app#1 testing (step 3)"
    assert canvas.link_number(message_id(task_id, 12)) == 12 and canvas.link_number("celery-uuid") is None


def test_a_link_runs_its_step_once_and_only_while_it_is_current(db: Database, settings: Settings) -> None:
    task_id = make_task(db)
    with db.session() as session:
        workflow.create_steps(session, session.get(Task, task_id), ["backend", "frontend", "testing"], settings)
    assert steps_kept.link_verdict(db, task_id, 0) == steps_kept.RUN
    assert steps_kept.link_verdict(db, task_id, 1) == steps_kept.STOP  # not current yet
    with db.session() as session:
        session.scalars(select_step(task_id, 0)).one().state = "done"
        task = session.get(Task, task_id)
        task.state, task.workflow_step = "queued", 1
    assert steps_kept.link_verdict(db, task_id, 0) == steps_kept.CONTINUE  # redelivered: the chain goes on
    assert steps_kept.link_verdict(db, task_id, 1) == steps_kept.RUN
    with db.session() as session:
        session.get(Task, task_id).state = "running"
    assert steps_kept.link_verdict(db, task_id, 0) == steps_kept.STOP  # its next step runs already
    assert steps_kept.waiting_step(db, task_id) is None


def test_followups_go_to_the_specialty_owning_the_commented_files() -> None:
    settings = settings_with()
    steps = [WorkflowStep(position=0, specialty="backend", files=json.dumps(["api/users.py", "README.md"])),
             WorkflowStep(position=1, specialty="frontend", files=json.dumps(["web/app.tsx", "README.md"])),
             WorkflowStep(position=2, specialty="testing", files=json.dumps(["tests/test_users.py"]))]
    assert workflow.followup_specialty(steps, ["api/users.py"], settings) == "backend"
    assert workflow.followup_specialty(steps, ["README.md"], settings) == "frontend"  # the latest step wins
    assert workflow.followup_specialty(steps, ["web/other.css"], settings) == "frontend"  # by its path globs
    assert workflow.followup_specialty(steps, [], settings) == "testing"  # no file named: the last step


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_a_pushed_step_is_found_by_its_trailer(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "--allow-empty", "-m", "base")
    base = git(repo, "rev-parse", "HEAD")
    message = steps_kept.step_message("Fix add", 3, "backend", "Made add add.", 7, 0)
    git(repo, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "--allow-empty", "-m", message)
    head = git(repo, "rev-parse", "HEAD")
    git_dir = repo / ".git"
    assert steps_kept.pushed_step(git_dir, base, head, 7, 0) == (head, "Made add add.")
    assert steps_kept.pushed_step(git_dir, base, head, 7, 1) is None
    assert steps_kept.pushed_step(git_dir, base, head, 70, 0) is None  # another task's trailer is no match


def test_the_next_step_reads_the_earlier_steps_and_the_pr_lists_them_all() -> None:
    text = workflow_section(position=1, specialties=["backend", "frontend"],
                            previous=[("backend", "Added the endpoint.", "abcdef1234567890", ("api.py",))],
                            log="abcdef1 backend: add endpoint\nM\tapi.py")
    assert "you are step 2 of 2 (frontend)" in text and "backend → frontend" in text
    assert "Added the endpoint." in text and "`api.py`" in text and "abcdef123456" in text
    records = (steps_kept.StepRecord(0, "backend", "done", "Added the endpoint.", "abcdef1234567890", ("api.py",),
                                     "`pytest` passed in 1.0s", True, 1200, 300, 0.0123),
               steps_kept.StepRecord(1, "frontend", "done", "Added the page.", None, (), "no tests found", None,
                                     800, 100, None))
    body = pr_body(PublishRequest("acme/app", 1, "Users", "Added the page.", None, Usage(), None, "m",
                                  steps=records), ["api.py"])
    assert "| 1 | backend | `abcdef123456` | ✅ `pytest` passed in 1.0s | 1200 / 300 | $0.0123 |" in body
    assert "| 2 | frontend | no change | no tests found | 800 / 100 | not priced |" in body
    assert "### 1. backend\nAdded the endpoint." in body
    assert "2 specialties worked on this in turn, on this one branch: backend → frontend." in body
    assert body.endswith("· 2 steps · tokens in 2000, out 400 · cost $0.0123")


def test_a_review_on_a_workflows_pr_is_run_by_the_step_that_changed_the_commented_file(
        db: Database, settings: Settings) -> None:
    from common.models import Followup, WebhookDelivery
    from coordinator.dispatch import Dispatcher
    from coordinator.followups.runner import FollowupRunner

    task_id = make_task(db)
    with db.session() as session:
        task = session.get(Task, task_id)
        workflow.create_steps(session, task, ["backend", "frontend", "testing"], settings)
    with db.session() as session:
        for position, files in enumerate((["api.py"], ["web/app.tsx"], ["tests/test_api.py"])):
            step = session.scalars(select_step(task_id, position)).one()
            step.state, step.files = "done", json.dumps(files)
        task = session.get(Task, task_id)
        task.state, task.workflow_step, task.specialty, task.pr_number = "pr_open", 2, "testing", 5
        for delivery, path in (("d-review", None), ("d-comment", "web/app.tsx")):
            comment = {"comment": {"id": 1, "path": path}} if path else {"review": {"id": 9}}
            session.add(WebhookDelivery(delivery_id=delivery, event="pull_request_review", payload=json.dumps(comment)))
            session.add(Followup(task_id=task_id, delivery_id=delivery, kind="review", author="reviewer",
                                 review_id=9, state="pending"))
    runner = FollowupRunner(db, Dispatcher(db, make_celery(settings)), lambda _: None)  # type: ignore[arg-type,return-value]
    try:
        assert runner.start_next(task_id) is not None
    finally:
        runner.stop()
    with db.session() as session:
        task = session.get(Task, task_id)
        assert (task.state, task.specialty) == ("queued", "frontend")
        assert any("routed to frontend" in (event.detail or "") for event in task.events)


def test_routing_a_workflow_changes_its_current_step_and_the_chain_follows(db: Database, settings: Settings) -> None:
    from coordinator.dispatch import Dispatcher
    from common.errors import TaskConflict
    from coordinator.operations import Operations

    celery = make_celery(settings)
    operations = Operations(db, Dispatcher(db, celery), celery)
    task_id = operations.submit(repo="acme/app", issue=None, title="Users page", specialty="backend,testing",
                                requested_by="tester")["id"]
    assert steps_of(db, task_id) == [(0, "backend", "pending"), (1, "testing", "pending")]
    with pytest.raises(TaskConflict, match="already has a testing step"):
        operations.route(task_id, "testing", actor="tester")
    detail = operations.route(task_id, "devops", actor="tester")
    assert (detail["specialty"], [s["specialty"] for s in detail["steps"]]) == ("devops", ["devops", "testing"])
    with db.session() as session:
        assert canvas.remaining(session, session.get(Task, task_id)) == [(0, "devops"), (1, "testing")]


def test_a_step_pushed_by_a_run_that_died_before_recording_it_is_recorded_not_run_again(
        forge_settings: Settings, db: Database, forge: object, model: object) -> None:
    from tests.pipeline_support import REPO, run_task
    from tests.sample_repo import ISSUE_BODY, ISSUE_TITLE, fixing_script

    task_id = make_task(db, repo=REPO, title=ISSUE_TITLE, body=ISSUE_BODY)
    with db.session() as session:
        workflow.create_steps(session, session.get(Task, task_id), ["backend", "frontend"], forge_settings)
    model.add(*fixing_script())  # type: ignore[attr-defined]
    first = run_task(forge_settings, db, forge, task_id)  # type: ignore[arg-type]
    assert first.state == "queued" and first.reason.startswith("step 1 of 2 (backend) done (pushed ")
    with db.session() as session:  # as if the worker died between its push and the transaction recording it
        step = session.scalars(select_step(task_id, 0)).one()
        pushed, step.state, step.commit_sha = step.commit_sha, "running", None
        task = session.get(Task, task_id)
        task.workflow_step, task.specialty = 0, "backend"
    calls = len(model.message_requests)  # type: ignore[attr-defined]
    again = run_task(forge_settings, db, forge, task_id)  # type: ignore[arg-type]
    assert again.state == "queued"
    assert len(model.message_requests) == calls  # type: ignore[attr-defined]  # the model was not asked again
    with db.session() as session:
        step = session.scalars(select_step(task_id, 0)).one()
        assert (step.state, step.commit_sha, step.summary) == ("done", pushed, "Fixed `add` to return the sum.")
        assert json.loads(step.files or "[]") == ["calc.py"]
        assert any("already on" in (event.detail or "") for event in session.get(Task, task_id).events)
