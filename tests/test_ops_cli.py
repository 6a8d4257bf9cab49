"""The ops commands (status, workers, submit, tasks retry|cancel|show, webhook replay, workspaces gc) on real
PostgreSQL and Redis, run through click as a user would (and as a subprocess where the exit status matters)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient
from sqlalchemy import select, update

import coordinator.cli.ops  # noqa: F401  (registers the commands on `cli`)
import coordinator.cli.status  # noqa: F401
import coordinator.cli.tasks  # noqa: F401
import coordinator.cli.webhook  # noqa: F401
import coordinator.cli.workspaces  # noqa: F401
from common.celery_app import make_celery
from common.db import Database
from common.forge.local import LocalForge
from common.leases import claim
from common.models import Task, TaskRun, WebhookDelivery, utcnow
from common.redact import Redactor
from common.settings import Settings
from common.states import TaskState
from common.transitions import transition
from coordinator.app import create_app
from coordinator.cli import cli
from coordinator.dispatch import Dispatcher
from tests.conftest import settings_env
from tests.factories import make_task
from tests.sample_repo import write_sample
from tests.support import headers, labeled_issue, queue_key
from workers.transcript import Transcript

pytestmark = pytest.mark.integration


def forgecrew(settings: Settings, *args: str) -> Result:
    """The command in process, with these settings (what FORGECREW_* would give it)."""
    return CliRunner().invoke(cli, list(args), obj=settings, catch_exceptions=False)


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, (result.output, result.stderr)
    return json.loads(result.stdout)


def move(db: Database, task_id: int, *states: TaskState) -> None:
    with db.session() as session:
        for state in states:
            transition(session, session.get(Task, task_id), state, actor="test")


def test_status_json_matches_the_database_and_the_queues(settings: Settings, db: Database) -> None:
    dispatcher = Dispatcher(db, make_celery(settings))
    queued = [make_task(db, issue_number=n, specialty="backend") for n in (1, 2)]
    for task_id in queued:
        dispatcher.dispatch(task_id)  # two messages waiting on backend
    running = make_task(db, issue_number=3, specialty="frontend")
    move(db, running, TaskState.QUEUED)
    claim(db, running, "someone")
    failed_today, failed_long_ago = (make_task(db, issue_number=n, specialty="devops") for n in (4, 5))
    move(db, failed_today, TaskState.FAILED)
    move(db, failed_long_ago, TaskState.FAILED)
    with db.session() as session:
        session.execute(update(Task).where(Task.id == failed_long_ago)
                        .values(updated_at=utcnow() - timedelta(days=2)))
    move(db, make_task(db, issue_number=6, specialty="retired"), TaskState.QUEUED)  # no longer configured

    data = as_json(forgecrew(settings, "status", "--json"))
    assert data["ok"] is True and data["database"] == {"ok": True, "detail": "ok"} and data["broker"]["ok"]
    assert data["workers"] == 0
    rows = {row["name"]: row for row in data["specialties"]}
    assert list(rows)[:5] == ["backend", "frontend", "testing", "devops", "general"] and "retired" in rows
    assert rows["backend"] == {"name": "backend", "queue_depth": 2, "workers": 0, "running": 0, "queued": 2,
                               "failed_last_day": 0}
    assert (rows["frontend"]["running"], rows["frontend"]["queued"], rows["frontend"]["queue_depth"]) == (1, 0, 0)
    assert rows["devops"]["failed_last_day"] == 1
    assert rows["retired"]["queued"] == 1 and rows["retired"]["queue_depth"] == 0
    shown = forgecrew(settings, "status")
    assert shown.exit_code == 0 and "database: ok" in shown.stdout and "FAILED 24H" in shown.stdout


def test_status_prints_what_it_can_and_exits_1_when_the_broker_is_down(settings: Settings, db: Database) -> None:
    env = {**settings_env(settings), "FORGECREW_BROKER_URL": "redis://127.0.0.1:1/0"}
    make_task(db, issue_number=1)
    done = subprocess.run([sys.executable, "-m", "coordinator.cli", "status", "--json"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    data = json.loads(done.stdout)
    assert data["ok"] is False and data["database"]["ok"] and not data["broker"]["ok"]
    assert all(row["queue_depth"] is None and row["workers"] is None for row in data["specialties"])
    assert done.stderr.startswith("forgecrew: broker down: ") and len(done.stderr.splitlines()) == 1


def test_workers_lists_nobody_when_no_worker_answers(settings: Settings, db: Database) -> None:
    assert as_json(forgecrew(settings, "workers", "--json")) == []
    assert "no worker answered" in forgecrew(settings, "workers").stdout


def test_submit_a_local_repository_imports_it_and_queues_the_task(make_settings: Callable[..., Settings],
                                                                  db: Database, tmp_path: Path) -> None:
    settings = make_settings()
    source = write_sample(tmp_path / "my app")
    subprocess.run(["git", "init", "-q", "-b", "main", str(source)], check=True)
    subprocess.run(["git", "-C", str(source), "-c", "user.name=t", "-c", "user.email=t@e", "add", "."], check=True)
    subprocess.run(["git", "-C", str(source), "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "x"],
                   check=True)
    task = as_json(forgecrew(settings, "submit", "--repo", str(source), "--title", "Add docs", "--specialty",
                             "backend", "--json"))
    assert task["repo"] == "local/my-app" and task["state"] == "queued"
    assert (settings.local_forge_root / "local" / "my-app.git" / "HEAD").exists()
    assert redis.Redis.from_url(settings.broker_url).llen(queue_key("backend")) == 1
    again = forgecrew(settings, "submit", "--repo", str(source), "--issue", "3")
    assert again.exit_code == 2 and "has no issues" in again.stderr


def test_submit_an_issue_and_the_conflict_of_a_second(make_settings: Callable[..., Settings], db: Database,
                                                     tmp_path: Path) -> None:
    settings = make_settings(forge="local")
    forge = LocalForge(settings)
    forge.create_repo("acme/calc", write_sample(tmp_path / "sample"))
    forge.create_issue("acme/calc", 2, "Database migration is slow", "the migration scripts take an hour")
    first = forgecrew(settings, "submit", "--repo", "acme/calc", "--issue", "2")
    assert first.exit_code == 0, first.stderr
    with db.session() as session:
        task = session.scalars(select(Task)).one()
    assert first.stdout.strip() == f"task {task.id}: queued ({task.specialty}) acme/calc#2"
    assert task.title == "Database migration is slow" and task.requested_by.startswith("cli")
    second = forgecrew(settings, "submit", "--repo", "acme/calc", "--issue", "2")
    assert second.exit_code == 2
    assert second.stderr.strip() == (f"forgecrew: issue acme/calc#2 already has active task {task.id}; cancel it "
                                     "first or let it finish")
    unknown = forgecrew(settings, "submit", "--repo", "acme/calc", "--title", "x", "--specialty", "nosuch")
    assert unknown.exit_code == 2 and "unknown specialty 'nosuch'" in unknown.stderr


def test_tasks_cancel_and_retry(settings: Settings, db: Database) -> None:
    task_id = make_task(db, issue_number=1)
    cancelled = forgecrew(settings, "tasks", "cancel", str(task_id), "--reason", "not now")
    assert cancelled.exit_code == 0 and cancelled.stdout.strip() == f"task {task_id}: cancelled (backend) acme/app#1"
    again = forgecrew(settings, "tasks", "cancel", str(task_id))
    assert again.exit_code == 2
    assert again.stderr.strip() == f"forgecrew: task {task_id} is already cancelled; there is nothing to cancel"
    retried = as_json(forgecrew(settings, "tasks", "retry", str(task_id), "--json"))
    assert retried["state"] == "queued" and retried["events"][-1]["detail"] == "retry requested (was cancelled)"
    assert [e["detail"] for e in retried["events"] if e["to_state"] == "cancelled"] == ["not now"]
    refused = forgecrew(settings, "tasks", "retry", str(task_id))
    assert refused.exit_code == 2 and f"task {task_id} is queued; only failed or cancelled" in refused.stderr
    missing = forgecrew(settings, "tasks", "retry", "999")
    assert missing.exit_code == 2 and missing.stderr.strip() == "forgecrew: no task with id 999"


def test_tasks_list_refuses_a_limit_below_one(settings: Settings, db: Database) -> None:
    for limit in ("0", "-3"):
        result = CliRunner().invoke(cli, ["tasks", "list", "--limit", limit], obj=settings)
        assert result.exit_code == 2 and "Invalid value for '--limit'" in result.stderr
    make_task(db, title="Fix the thing")
    listed = forgecrew(settings, "tasks", "list")
    assert listed.exit_code == 0 and "Fix the thing" in listed.stdout and "STATE" in listed.stdout


def test_tasks_show_is_the_audit_log_with_each_runs_tool_calls(settings: Settings, db: Database,
                                                               tmp_path: Path) -> None:
    task_id = make_task(db, issue_number=1)
    move(db, task_id, TaskState.QUEUED)
    held = claim(db, task_id, "backend@host/pid1@host")
    transcript = Transcript(tmp_path / "transcript.jsonl", Redactor([]))
    with db.session() as session:  # a run as the worker leaves it: its row, and its part of the transcript
        run = TaskRun(task_id=task_id, attempt=held.attempt, worker=held.owner)
        session.add(run)
        session.flush()
        run_id = run.id
    transcript.record("run", run_id=run_id, task_id=task_id, attempt=1)
    transcript.record("assistant", content=[
        {"type": "text", "text": "Looking."},
        {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "calc.py"}},
        {"type": "tool_use", "id": "toolu_2", "name": "run_command", "input": {"command": "pytest -q " + "x" * 200}},
    ])
    transcript.record("tool_results", content=[
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "1: def add", "is_error": False},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "exit 1", "is_error": True}])
    transcript.record("assistant", content=[{"type": "tool_use", "id": "toolu_3", "name": "finish",
                                             "input": {"summary": "Fixed add."}}])
    with db.session() as session:
        run = session.get(TaskRun, run_id)
        run.outcome, run.finished_at, run.transcript_path = "pr_open", utcnow(), str(transcript.path)
        run.test_command, run.tests_passed = "python3 -m unittest", True
        run.input_tokens, run.output_tokens, run.cost_usd = 1200, 300, 0.0123
        task = session.get(Task, task_id)
        task.input_tokens, task.output_tokens, task.cost_usd = 1200, 300, 0.0123

    data = as_json(forgecrew(settings, "tasks", "show", str(task_id), "--json"))
    assert {"id", "repo", "issue_number", "specialty", "state", "branch", "pr_url", "attempt", "events",
            "usage"} <= set(data)
    [shown_run] = data["runs"]
    calls = shown_run["tool_calls"]
    assert [(c["name"], c["is_error"]) for c in calls] == [("read_file", False), ("run_command", True),
                                                           ("finish", None)]
    assert calls[0]["argument"] == "calc.py" and calls[1]["argument"].startswith("pytest -q xxx")
    assert len(calls[1]["argument"]) == 100 and calls[2]["argument"] == "Fixed add."
    assert shown_run["test_command"] == "python3 -m unittest" and shown_run["transcript"] == str(transcript.path)
    text = forgecrew(settings, "tasks", "show", str(task_id)).stdout
    assert "transitions:" in text and "queued -> running" in text
    assert "tests: `python3 -m unittest` passed" in text and f"transcript: {transcript.path}" in text
    assert "tool calls (3):" in text and "read_file    calc.py" in text and "[error]" in text
    assert "cost $0.0123" in text and "in 1200 out 300" in text


def test_webhook_replay_runs_a_stored_delivery_through_intake_again(make_settings: Callable[..., Settings],
                                                                    db: Database) -> None:
    strict = make_settings(repo_allowlist=["acme/*"])
    body = json.dumps(labeled_issue("forgecrew:backend")).encode()  # Codertocat/Hello-World
    with TestClient(create_app(strict, run_reconciler=False)) as client:
        response = client.post("/webhooks/github", content=body, headers=headers("issues", body, delivery="d-1"))
    assert response.json()["status"].startswith("ignored: Codertocat/Hello-World is not in")

    fixed = make_settings(repo_allowlist=["Codertocat/*"])  # the operator fixed the allowlist
    first = as_json(forgecrew(fixed, "webhook", "replay", "d-1", "--json"))
    assert first["delivery"] == "d-1-replay-1" and first["outcome"].startswith("task ") and first["task_id"]
    assert redis.Redis.from_url(fixed.broker_url).llen(queue_key("backend")) == 1
    second = forgecrew(fixed, "webhook", "replay", "d-1")
    assert second.exit_code == 0
    assert second.stdout.strip() == (f"d-1-replay-2: recorded: task {first['task_id']} is already active for this "
                                     f"issue (task {first['task_id']})")
    with db.session() as session:
        rows = {row.delivery_id: row for row in session.scalars(select(WebhookDelivery))}
    assert set(rows) == {"d-1", "d-1-replay-1", "d-1-replay-2"} and rows["d-1"].outcome.startswith("ignored")
    assert json.loads(rows["d-1-replay-1"].payload) == json.loads(body)
    missing = forgecrew(fixed, "webhook", "replay", "nope")
    assert missing.exit_code == 2 and missing.stderr.strip() == "forgecrew: no webhook delivery with id 'nope'"


def test_workspaces_gc_counts_its_progress_and_prints_json(settings: Settings, db: Database) -> None:
    active = make_task(db, issue_number=1)
    tasks_dir = settings.workspace_root / "tasks"
    old = (datetime.now(UTC) - timedelta(days=30)).isoformat()
    for number in range(1000, 1501):  # finished long ago
        (tasks_dir / str(number)).mkdir(parents=True)
        (tasks_dir / str(number) / "metadata.json").write_text(json.dumps({"finished_at": old}))
    (tasks_dir / str(active)).mkdir()
    (tasks_dir / str(active) / "metadata.json").write_text(json.dumps({"finished_at": old}))
    result = forgecrew(settings, "workspaces", "gc", "--json")
    data = as_json(result)
    assert data["removed_count"] == 501 and data["examined"] == 502 and data["retention_days"] == 7
    assert str(tasks_dir / str(active)) not in data["removed"] and (tasks_dir / str(active)).exists()
    assert "examined 500 of 502 workspaces" in result.stderr
    again = forgecrew(settings, "workspaces", "gc")
    assert again.stdout.strip().splitlines()[-1] == "0 workspace(s) removed of 1 examined"
    assert os.listdir(tasks_dir) == [str(active)]


def test_tasks_approve_runs_a_waiting_plan_and_show_prints_it(settings: Settings, db: Database) -> None:
    task_id = make_task(db, issue_number=1)
    refused = forgecrew(settings, "tasks", "approve", str(task_id))
    assert refused.exit_code == 2 and f"task {task_id} is triaged, not waiting for a plan's approval" in refused.stderr
    with db.session() as session:
        task = session.get(Task, task_id)
        assert task is not None
        for state in (TaskState.QUEUED, TaskState.RUNNING, TaskState.AWAITING_APPROVAL):
            transition(session, task, state, actor="test")
        task.plan, task.plan_revision = "1. Fix add().\n2. Add a test.", 1
    waiting = forgecrew(settings, "tasks", "show", str(task_id))
    assert "plan:           revision 1, waiting for approval" in waiting.stdout and "  2. Add a test." in waiting.stdout
    approved = as_json(forgecrew(settings, "tasks", "approve", str(task_id), "--json"))
    assert approved["state"] == "queued" and approved["events"][-1]["detail"].startswith("plan revision 1 approved by")
    shown = forgecrew(settings, "tasks", "show", str(task_id))
    assert "revision 1, approved by cli:" in shown.stdout
