"""The operations layer (submit, retry, cancel) against real PostgreSQL, Redis and a real worker process."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from common.celery_app import make_celery, message_id
from common.db import Database
from common.errors import InvalidRequest, TaskConflict, TaskNotFound
from common.forge.local import LocalForge
from common.models import Task, TaskRun
from common.settings import Settings
from common.states import TaskState
from common.transitions import transition
from coordinator import cluster
from coordinator.dispatch import Dispatcher
from coordinator.operations import Operations
from tests.conftest import settings_env
from tests.factories import make_task
from tests.fakes.anthropic_server import DEFAULT_KEY, FakeAnthropic
from tests.sample_repo import ISSUE_BODY, ISSUE_TITLE, fixing_script, write_sample
from tests.support import Process, queue_key, start_worker, wait_for
from workers.sizing import worker_concurrency
from workers.workspace import WorkspaceManager

pytestmark = pytest.mark.integration
REPO = "acme/calc"


@pytest.fixture
def ops_for(db: Database) -> Iterator[Callable[[Settings], Operations]]:
    """Operations over the test database, with settings of the test's choosing (forge, model...)."""
    made: list[Database] = []

    def make(settings: Settings) -> Operations:
        database = Database(settings)
        made.append(database)
        celery = make_celery(settings)
        return Operations(database, Dispatcher(database, celery), celery)

    yield make
    for database in made:
        database.dispose()


@pytest.fixture
def ops(ops_for: Callable[[Settings], Operations], settings: Settings) -> Operations:
    return ops_for(settings)


def queued_ids(settings: Settings, queue: str) -> list[str]:
    raw = redis.Redis.from_url(settings.broker_url).lrange(queue_key(queue), 0, -1)
    return [json.loads(item)["headers"]["id"] for item in raw]


def set_state(db: Database, task_id: int, *states: TaskState) -> None:
    with db.session() as session:
        for state in states:
            transition(session, session.get(Task, task_id), state, actor="test")


def test_submit_without_an_issue_creates_and_sends_the_task(ops: Operations, settings: Settings) -> None:
    task = ops.submit(repo="acme/app", issue=None, title="Add a /health page", body="for the load balancer",
                      specialty="frontend", requested_by="api:ana")
    assert task["state"] == "queued" and task["specialty"] == "frontend" and task["issue_number"] is None
    assert queued_ids(settings, "frontend") == [message_id(task["id"], 1)]
    assert [(e["to_state"], e["actor"]) for e in task["events"]] == [
        ("pending", "api:ana"), ("triaged", "triage"), ("queued", "api:ana")]
    assert task["triage_reason"] == "chosen by api:ana"


def test_submit_reads_an_issue_from_the_forge_and_refuses_a_second_active_task(
        make_settings: Callable[..., Settings], db: Database, ops_for: Callable[[Settings], Operations],
        tmp_path: Path) -> None:
    settings = make_settings(forge="local")
    forge = LocalForge(settings)
    forge.create_repo(REPO, write_sample(tmp_path / "sample"))
    forge.create_issue(REPO, 7, "Fix the login page CSS", "the button overflows", labels=("forgecrew:frontend",))
    ops = ops_for(settings)
    task = ops.submit(repo=REPO, issue=7, title=None, requested_by="cli:ana")
    assert (task["title"], task["body"], task["specialty"]) == ("Fix the login page CSS", "the button overflows",
                                                                 "frontend")  # the route label counted
    with pytest.raises(TaskConflict, match=rf"issue {REPO}#7 already has active task {task['id']}") as caught:
        ops.submit(repo=REPO, issue=7, title=None, requested_by="cli:ana")
    assert caught.value.task_id == task["id"]


@pytest.mark.parametrize("kwargs,message", [
    ({"repo": "acme/app", "issue": None, "title": "x", "specialty": "nosuch"}, "unknown specialty 'nosuch'; known:"),
    ({"repo": "not-a-repo", "issue": None, "title": "x"}, "repository must be owner/name"),
    ({"repo": "acme/app", "issue": None, "title": "  "}, "give an issue number, or a title"),
    ({"repo": "acme/app", "issue": 0, "title": None}, "issue numbers start at 1"),
])
def test_submit_refuses_bad_input_before_writing_anything(ops: Operations, db: Database, kwargs: dict,
                                                          message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as caught:
        ops.submit(requested_by="t", **kwargs)
    assert isinstance(caught.value, ValueError)  # the API answers 400/422 for it
    with db.session() as session:
        assert session.scalars(select(Task)).all() == []


def test_retry_queues_a_failed_task_again_and_refuses_other_states(ops: Operations, db: Database,
                                                                  settings: Settings) -> None:
    failed = make_task(db, issue_number=1)
    set_state(db, failed, TaskState.QUEUED, TaskState.FAILED)
    task = ops.retry(failed, actor="cli:ana")
    assert task["state"] == "queued" and task["failure_reason"] is None
    assert task["events"][-1]["detail"] == "retry requested (was failed)" and task["events"][-1]["actor"] == "cli:ana"
    assert queued_ids(settings, "backend") == [message_id(failed, 1)]
    with pytest.raises(TaskConflict, match=rf"task {failed} is queued; only failed or cancelled tasks can be "
                                           "retried; it is still in flight"):
        ops.retry(failed, actor="cli:ana")
    with pytest.raises(TaskNotFound):
        ops.retry(9999, actor="cli:ana")


def test_retry_refuses_while_the_issue_has_another_active_task(ops: Operations, db: Database) -> None:
    old = make_task(db, issue_number=5)
    set_state(db, old, TaskState.CANCELLED)
    newer = make_task(db, issue_number=5)  # the label was added again meanwhile
    with pytest.raises(TaskConflict, match=rf"already has active task {newer}; cancel it before retrying task {old}"):
        ops.retry(old, actor="cli:ana")


def test_cancel_a_queued_task_records_who_and_why_and_refuses_twice(ops: Operations, db: Database) -> None:
    task_id = make_task(db, issue_number=3)
    ops.dispatcher.dispatch(task_id)
    task = ops.cancel(task_id, actor="cli:ana", reason="duplicate of #2")
    assert task["state"] == "cancelled" and task["lease_owner"] is None
    last = task["events"][-1]
    assert (last["from_state"], last["to_state"], last["actor"], last["detail"]) == (
        "queued", "cancelled", "cli:ana", "duplicate of #2")
    with pytest.raises(TaskConflict, match=rf"task {task_id} is already cancelled; there is nothing to cancel"):
        ops.cancel(task_id, actor="cli:ana")


def git_branches(bare: Path) -> str:
    return subprocess.run(["git", "--git-dir", str(bare), "branch", "--list", "forgecrew/*"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_cancel_stops_a_running_worker_at_its_next_step(make_settings: Callable[..., Settings], db: Database,
                                                        ops_for: Callable[[Settings], Operations],
                                                        tmp_path: Path, processes: list[Process]) -> None:
    """A real worker process: the cancel wins, nothing is pushed, the workspace stays, the run says so."""
    with FakeAnthropic() as model:
        # a long lease: the worker must notice through its per-step check, not the next heartbeat
        settings = make_settings(forge="local", anthropic_api_key=DEFAULT_KEY, anthropic_base_url=model.base_url,
                                 lease_seconds=120)
        forge = LocalForge(settings)
        bare = forge.create_repo(REPO, write_sample(tmp_path / "sample"))
        forge.create_issue(REPO, 1, ISSUE_TITLE, ISSUE_BODY)
        read, *rest = fixing_script()
        model.add(dataclasses.replace(read, delay=10), *rest)  # the first reply takes a while
        ops = ops_for(settings)
        queued_first = ops.submit(repo=REPO, issue=None, title="never run", specialty="backend",
                                  requested_by="test")
        ops.cancel(queued_first["id"], actor="cli:ana")  # cancelled before any worker saw it
        processes.append(start_worker(settings_env(settings), tmp_path, "backend"))
        task_id = ops.submit(repo=REPO, issue=1, title=None, specialty="backend", requested_by="test")["id"]
        wait_for(lambda: len(model.message_requests) == 1, timeout=90, what="the agent's first model call")
        # while it runs, the ops views see the worker and its task
        [worker] = cluster.workers(ops.celery, db)
        assert worker["queues"] == ["backend"] and worker["pool"] == "thread"  # the default pool, sized to the host
        assert worker["concurrency"] == worker_concurrency(settings, "threads")
        assert [job["task_id"] for job in worker["active"]] == [task_id] and worker["last_heartbeat"]
        backend = cluster.status_report(settings, db, ops.celery)["specialties"][0]
        assert (backend["name"], backend["workers"], backend["running"], backend["queue_depth"]) == (
            "backend", 1, 1, 0)

        ops.cancel(task_id, actor="cli:ana", reason="wrong approach")
        revoked = ops.celery.control.inspect(timeout=2).revoked() or {}
        assert message_id(task_id, 1) in [ident for ids in revoked.values() for ident in ids]

        def finished_run() -> TaskRun | None:
            with db.session() as session:
                run = session.scalars(select(TaskRun).where(TaskRun.task_id == task_id)).first()
                return run if run is not None and run.finished_at is not None else None

        run = wait_for(finished_run, timeout=60, what="the cancelled run to end")
        assert run.outcome == "cancelled" and run.detail == "cancelled by cli:ana: wrong approach"
        assert len(model.message_requests) == 1  # stopped at the next step: no second model call
    with db.session() as session:
        task = session.get(Task, task_id)
        assert task.state == "cancelled" and task.lease_owner is None and task.pr_url is None
        assert task.events[-1].to_state == "cancelled"  # nothing the worker did came after the cancel
        never = session.get(Task, queued_first["id"])
        assert never.state == "cancelled" and never.attempt == 0 and never.runs == []
    assert git_branches(bare) == "" and forge.pull_requests(REPO) == []
    workspace = settings.workspace_root / "tasks" / str(task_id)
    meta = json.loads((workspace / "metadata.json").read_text())
    assert meta["state"] == "cancelled" and (workspace / "repo" / "calc.py").exists()
    assert run.transcript_path and Path(run.transcript_path).exists()
    # kept for inspection until the retention runs out
    assert WorkspaceManager(settings.workspace_root).gc(timedelta(days=1), set()) == []
    assert workspace.exists()


def test_a_pr_open_task_can_be_cancelled_and_says_the_pr_stays(ops: Operations, db: Database) -> None:
    task_id = make_task(db, issue_number=4)
    set_state(db, task_id, TaskState.QUEUED, TaskState.RUNNING, TaskState.PR_OPEN)
    with db.session() as session:
        session.get(Task, task_id).pr_url = "local://acme/app/pull/1"
    task = ops.cancel(task_id, actor="api:bob")
    assert task["state"] == "cancelled"
    assert task["events"][-1]["detail"] == ("cancelled while pr_open (pull request local://acme/app/pull/1 stays "
                                            "open; close it on the forge if unwanted)")
    done = make_task(db, issue_number=9)
    set_state(db, done, TaskState.QUEUED, TaskState.RUNNING, TaskState.PR_OPEN, TaskState.DONE)
    with pytest.raises(TaskConflict, match=rf"task {done} is already done"):
        ops.cancel(done, actor="api:bob")
