"""Multi-specialty workflows end to end: real coordinator and worker processes, PostgreSQL, Redis, Celery
(a chain of links, one per step), the fake GitHub or the local forge, and a scripted model.

An issue with several specialty labels runs as one task whose steps take turns on one branch; the
last one opens the one PR. The record in PostgreSQL, not the canvas, decides: a worker killed in the
second step leaves it to another worker without the first step running again, and a failing middle
step stops the chain until a writer's `/forgecrew retry` resumes it at that step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from common.db import Database
from common.forge.local import LocalForge
from common.models import Task, TaskRun, WorkflowStep
from common.settings import Settings
from tests.conftest import settings_env
from tests.fakes.anthropic_server import DEFAULT_KEY, FakeAnthropic, error, tool_use
from tests.fakes.github_server import FakeGitHub
from tests.sample_repo import ISSUE_BODY, ISSUE_TITLE, fixing_script, write_sample
from tests.pipeline_support import github_cluster_settings
from tests.support import Process, deliver, labeled_issue, start_coordinator, start_worker, wait_for
from tests.test_e2e_plans import REPO, TOKEN, first_message, say
from tests.test_ops_cli import as_json, forgecrew

pytestmark = pytest.mark.integration
LOCAL_REPO = "acme/calc"
PAGE = "<!doctype html>\n<title>calc</title>\n<p>2 + 3 = <output>5</output></p>\n"
NEGATIVES = ("import unittest\n\nfrom calc import add\n\n\nclass Negatives(unittest.TestCase):\n"
             "    def test_negatives(self):\n        self.assertEqual(add(-2, -3), -5)\n")


def frontend_script(seen: list[str] | None = None) -> list[Any]:
    def page(request: Any) -> Any:
        if seen is not None:
            seen.append(first_message(_Request(request)))
        return tool_use("write_file", {"path": "ui/index.html", "content": PAGE})

    return [page, tool_use("finish", {"summary": "Added `ui/index.html`, a page that shows a sum."})]


def negatives_script() -> list[Any]:
    return [tool_use("write_file", {"path": "tests/test_negatives.py", "content": NEGATIVES}),
            tool_use("finish", {"summary": "Added a test for negative numbers."})]


class _Request:
    """first_message() reads `.body` of a recorded request; a script step gets the body itself."""

    def __init__(self, body: Any) -> None:
        self.body = body


def labels_issue(*labels: str) -> dict[str, Any]:
    """issues.labeled for issue 1 carrying all these labels (the last one just added), as GitHub sends it."""
    data = labeled_issue(labels[-1], title=ISSUE_TITLE, body=ISSUE_BODY)
    data["issue"]["number"] = 1
    data["issue"]["labels"] = [{**data["label"], "name": name} for name in labels]
    return data


@pytest.fixture
def github() -> Any:
    with FakeGitHub() as server:
        server.add_token(TOKEN)
        server.add_repo(REPO)
        server.add_issue(REPO, 1, ISSUE_TITLE, ISSUE_BODY, labels=("forgecrew:backend", "forgecrew:frontend"))
        server.set_permission(REPO, "reviewer", "write")
        yield server
        assert server.violations == [], "requests outside GitHub's OpenAPI description"


@pytest.fixture
def on_github(make_settings: Callable[..., Settings], github: FakeGitHub, model: FakeAnthropic, tmp_path: Path,
              processes: list[Process]) -> Callable[..., tuple[str, Path, list[Process]]]:
    """Start a coordinator and `workers` workers (each consuming every step's queue) against the fake GitHub."""

    def start(workers: int = 1, **overrides: Any) -> tuple[str, Path, list[Process]]:
        git_root = tmp_path / "git"
        settings = github_cluster_settings(make_settings, github.api_url, model, tmp_path, repo=REPO,
                                           token=TOKEN, **overrides)
        env = settings_env(settings)
        coordinator, url = start_coordinator(env, tmp_path)
        processes.append(coordinator)
        with ThreadPoolExecutor(workers) as pool:  # they start side by side: each takes seconds to be ready
            started = list(pool.map(lambda _: start_worker(env, tmp_path, "backend", "--specialty",
                                                           "frontend,testing"), range(workers)))
        processes.extend(started)
        return url, git_root / f"{REPO}.git", started

    return start


def ended(db: Database, task_id: int, state: str, processes: list[Process], timeout: float = 60) -> Task:
    def reached() -> Task | None:
        with db.session() as session:
            task = session.get(Task, task_id)
            assert task is not None
            if task.state == "failed" and state != "failed":
                raise AssertionError((task.failure_reason, [p.log()[-3000:] for p in processes[1:]]))
            return task if task.state == state else None

    try:
        return wait_for(reached, timeout=timeout, interval=0.3, what=f"task {task_id} {state}")
    except AssertionError as exc:
        if "timed out" in str(exc):
            raise AssertionError(f"{exc}\n" + "\n".join(p.log()[-3000:] for p in processes)) from None
        raise


def steps(db: Database, task_id: int) -> list[tuple[str, str, str | None, int | None]]:
    with db.session() as session:
        return [(s.specialty, s.state, s.commit_sha, s.run_id) for s in session.scalars(
            select(WorkflowStep).where(WorkflowStep.task_id == task_id).order_by(WorkflowStep.position))]


def branch_commits(bare: Path, branch: str) -> list[str]:
    """The branch's commits since main, oldest first: each one's trailer line (the step that made it)."""
    done = subprocess.run(["git", "--git-dir", str(bare), "log", "--reverse", "--format=%B%x01", f"main..{branch}"],
                          capture_output=True, text=True, check=True)
    return [next((line for line in body.splitlines() if line.startswith("Forgecrew-Step:")), "(none)")
            for body in done.stdout.split("\x01") if body.strip()]


def step_runs(model: FakeAnthropic, text: str) -> int:
    """How many agent runs began with a first message containing `text` (each run's first request)."""
    return sum(1 for request in model.message_requests
               if len(request.body["messages"]) == 1 and text in first_message(request))


def test_a_two_label_issue_makes_one_pr_with_a_commit_from_each_specialty(
        on_github: Callable[..., tuple[str, Path, list[Process]]], db: Database, model: FakeAnthropic,
        github: FakeGitHub, processes: list[Process]) -> None:
    url, bare, _ = on_github()
    seen: list[str] = []
    model.add(*fixing_script(), *frontend_script(seen))
    answer = deliver(url, "issues", labels_issue("forgecrew:frontend", "forgecrew:backend"))
    assert "workflow: backend, frontend" in answer["status"]
    task = ended(db, answer["task_id"], "pr_open", processes)

    [pr] = github.pulls(REPO)
    assert branch_commits(bare, task.branch) == [f"Forgecrew-Step: {task.id}/0", f"Forgecrew-Step: {task.id}/1"]
    body = pr.body or ""
    assert "## Steps (2 specialties, one branch)" in body
    assert "| 1 | backend |" in body and "| 2 | frontend |" in body
    assert "Fixed `add` to return the sum." in body and "Added `ui/index.html`" in body
    assert [(name, state) for name, state, _, _ in steps(db, task.id)] == [("backend", "done"), ("frontend", "done")]
    # the frontend step saw its place, the backend step's summary and its commit on the branch
    [frontend_first] = seen
    assert "you are step 2 of 2 (frontend)" in frontend_first
    assert "Fixed `add` to return the sum." in frontend_first and "calc.py" in frontend_first
    assert "backend: add() subtracts" in frontend_first  # git log of the branch so far
    with db.session() as session:
        row = session.get(Task, task.id)
        assert row is not None and (row.specialty, row.workflow_step) == ("frontend", 1)
        kinds = [r.outcome for r in session.scalars(select(TaskRun).where(TaskRun.task_id == task.id)
                                                    .order_by(TaskRun.id))]
    assert kinds == ["queued", "pr_open"]


def test_a_worker_killed_in_the_second_step_leaves_it_to_another_without_rerunning_the_first(
        on_github: Callable[..., tuple[str, Path, list[Process]]], db: Database, model: FakeAnthropic,
        github: FakeGitHub, processes: list[Process]) -> None:
    url, bare, workers = on_github(workers=2, lease_seconds=3)
    inside, release = threading.Event(), threading.Event()

    def hang(request: Any) -> Any:  # the second step's first model call: the worker is killed while it waits
        inside.set()
        release.wait(30)
        return tool_use("list_files", {"path": "."})

    model.add(*fixing_script(), hang, *frontend_script())
    task_id = deliver(url, "issues", labels_issue("forgecrew:backend", "forgecrew:frontend"))["task_id"]
    assert inside.wait(60), [p.log()[-2000:] for p in processes]
    with db.session() as session:
        owner = session.get(Task, task_id).lease_owner or ""  # type: ignore[union-attr]
    [doomed] = [w for w in workers if w.log_path.stem.removeprefix("worker-") in owner]
    os.killpg(doomed.popen.pid, signal.SIGKILL)
    release.set()
    task = ended(db, task_id, "pr_open", processes)

    assert len(github.pulls(REPO)) == 1
    assert branch_commits(bare, task.branch) == [f"Forgecrew-Step: {task_id}/0", f"Forgecrew-Step: {task_id}/1"]
    assert step_runs(model, "you are step 1 of 2 (backend)") == 1  # the first step ran once
    assert step_runs(model, "you are step 2 of 2 (frontend)") == 2  # the killed run and the one that finished
    with db.session() as session:
        rows = list(session.scalars(select(TaskRun).where(TaskRun.task_id == task_id).order_by(TaskRun.id)))
    assert [r.outcome for r in rows] == ["queued", "lost", "pr_open"]
    recorded = steps(db, task_id)
    assert [(name, state) for name, state, _, _ in recorded] == [("backend", "done"), ("frontend", "done")]
    assert recorded[0][3] == rows[0].id and recorded[1][3] == rows[2].id


def test_a_failing_middle_step_stops_the_chain_and_retry_resumes_at_it(
        on_github: Callable[..., tuple[str, Path, list[Process]]], db: Database, model: FakeAnthropic,
        github: FakeGitHub, processes: list[Process]) -> None:
    url, bare, _ = on_github()
    model.add(*fixing_script(), error(400, "invalid_request_error", "scripted: this step cannot go on"))
    labels = ("forgecrew:backend", "forgecrew:frontend", "forgecrew:testing")
    task_id = deliver(url, "issues", labels_issue(*labels))["task_id"]
    failed = ended(db, task_id, "failed", processes)

    assert (failed.failure_reason or "").startswith("step 2 of 3 (frontend) failed: model error")
    assert github.pulls(REPO) == []
    assert branch_commits(bare, failed.branch) == [f"Forgecrew-Step: {task_id}/0"]  # step 1's work is kept
    assert [(n, s) for n, s, _, _ in steps(db, task_id)] == [("backend", "done"), ("frontend", "failed"),
                                                             ("testing", "pending")]
    status = [c["body"] for c in github.issue(REPO, 1).comments if "step 2 of 3 (frontend) failed" in c["body"]]
    assert status, [c["body"][:300] for c in github.issue(REPO, 1).comments]

    model.add(*frontend_script(), *negatives_script())
    answer = say(url, github, db, "/forgecrew retry", author="reviewer")
    assert answer.state == "done", answer.reply
    task = ended(db, task_id, "pr_open", processes)
    assert len(github.pulls(REPO)) == 1
    assert branch_commits(bare, task.branch) == [f"Forgecrew-Step: {task_id}/{n}" for n in range(3)]
    assert step_runs(model, "you are step 1 of 3 (backend)") == 1
    assert [(n, s) for n, s, _, _ in steps(db, task_id)] == [("backend", "done"), ("frontend", "done"),
                                                             ("testing", "done")]


def test_three_specialties_on_the_local_forge_from_labels_to_one_pr(
        make_settings: Callable[..., Settings], model: FakeAnthropic, db: Database, tmp_path: Path,
        processes: list[Process]) -> None:
    """`forgecrew submit` of an issue with three labels, `tasks show` of the workflow (the CLI in process)."""
    settings: Settings = make_settings(forge="local", anthropic_api_key=DEFAULT_KEY,
                                       anthropic_base_url=model.base_url)
    forge = LocalForge(settings)
    forge.create_repo(LOCAL_REPO, write_sample(tmp_path / "sample"))
    forge.create_issue(LOCAL_REPO, 1, ISSUE_TITLE, ISSUE_BODY,
                       labels=("forgecrew:testing", "forgecrew:frontend", "forgecrew:backend"))
    processes.append(start_worker(settings_env(settings), tmp_path, "backend,frontend,testing"))
    model.add(*fixing_script(), *frontend_script(), *negatives_script())
    task_id = as_json(forgecrew(settings, "submit", "--repo", LOCAL_REPO, "--issue", "1", "--json"))["id"]
    task = ended(db, task_id, "pr_open", processes)

    [pr] = forge.pull_requests(LOCAL_REPO)
    assert "## Steps (3 specialties, one branch)" in pr["body"]
    assert branch_commits(forge.bare_path(LOCAL_REPO), task.branch) == [
        f"Forgecrew-Step: {task_id}/{n}" for n in range(3)]
    shown = forgecrew(settings, "tasks", "show", str(task_id))
    assert shown.exit_code == 0, shown.output
    order = [shown.stdout.index(f"{n}. {name:<10} done ") for n, name in ((1, "backend"), (2, "frontend"),
                                                                         (3, "testing"))]
    assert order == sorted(order), shown.stdout
    detail = as_json(forgecrew(settings, "tasks", "show", str(task_id), "--json"))
    assert [(s["specialty"], s["state"]) for s in detail["steps"]] == [
        ("backend", "done"), ("frontend", "done"), ("testing", "done")]
    assert [s["files"] for s in detail["steps"]] == [["calc.py"], ["ui/index.html"], ["tests/test_negatives.py"]]
    assert all(s["commit_sha"] for s in detail["steps"])
