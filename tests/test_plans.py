"""Plans before code in the worker: a read-only planning run, the plan on the issue, the wait, the approved run.

The pipeline runs in process on the local forge with real PostgreSQL and a scripted model server;
tests/test_e2e_plans.py drives the same through the coordinator, the broker and a worker process.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from common.db import Database
from common.forge.local import LocalForge
from common.leases import claim
from common.models import Task
from common.settings import Settings
from common.states import TaskState
from common.transitions import transition
from coordinator.dispatch import Dispatcher
from coordinator.reconciler import Reconciler
from tests.factories import make_task
from tests.fakes.anthropic_server import FakeAnthropic, tool_use
from tests.pipeline_support import REPO, load, run_task
from tests.sample_repo import ISSUE_BODY, ISSUE_TITLE, fixing_script
from workers import plans
from workers.pipeline import Pipeline
from workers.prompts import plan_message, task_message
from workers.repo_config import RepoConfig, load_repo_config

PLAN = "1. In `calc.py`, make `add` return `a + b`.\n2. Keep the test in `tests/test_calc.py`."


def test_plan_first_is_read_from_forgecrew_yml(tmp_path: Path) -> None:
    (tmp_path / ".forgecrew.yml").write_text("plan_first: true\n")
    assert load_repo_config(tmp_path).plan_first is True
    assert RepoConfig().plan_first is False


@pytest.mark.parametrize("labels, plan_first, approved_by, expected", [
    (("forgecrew:plan",), False, None, True),
    (("Forgecrew:Plan", "bug"), False, None, True),
    ((), True, None, True),
    (("forgecrew:plan",), True, "ana", False),  # approved: the change runs
    (("forgecrew:backend",), False, None, False),
])
def test_a_plan_comes_first_when_the_label_or_the_repository_asks(labels: tuple[str, ...], plan_first: bool,
                                                                  approved_by: str | None, expected: bool) -> None:
    state = plans.PlanState(plan="p" if approved_by else None, approved_by=approved_by)
    assert plans.needs_plan(state, labels, RepoConfig(plan_first=plan_first)) is expected


def test_planning_tools_only_read_and_are_never_empty() -> None:
    assert plans.planning_tools(()) == ("list_files", "read_file", "search")
    assert plans.planning_tools(("read_file", "write_file", "run_command")) == ("read_file",)
    assert plans.planning_tools(("run_command",)) == ("finish",)  # an empty allowance would mean every tool


def test_the_plan_comment_says_how_to_approve_and_revise() -> None:
    body = plans.plan_comment(4, PLAN, 2, feedback="also handle\nnegatives")
    assert body.startswith(plans.MARKER) and "task 4 · plan (revision 2)" in body and PLAN in body
    assert "> also handle negatives" in body
    assert "`/forgecrew approve`" in body and "`@forgecrew <changes to the plan>`" in body


def test_prompts_carry_the_previous_plan_the_changes_and_the_approved_plan(forge: LocalForge,
                                                                           tmp_path: Path) -> None:
    issue = forge.get_issue(REPO, 1)
    revising = plan_message(issue, tmp_path, instructions={}, extra="", previous_plan=PLAN, changes="negatives too")
    assert f"## Your previous plan\n{PLAN}" in revising and "negatives too" in revising
    assert revising.endswith("Write the revised plan, then call finish with it.")
    first = plan_message(issue, tmp_path, instructions={}, extra="")
    assert "previous plan" not in first and "change nothing" in first
    approved = task_message(issue, tmp_path, instructions={}, extra="", test_command=None, approved_plan=PLAN)
    assert "## Approved plan" in approved and PLAN in approved
    assert "## Approved plan" not in task_message(issue, tmp_path, instructions={}, extra="", test_command=None)


def tools_offered(request: Any) -> list[str]:
    return [tool["name"] for tool in request.body["tools"]]


def first_message(request: Any) -> str:
    content = request.body["messages"][0]["content"]
    return content if isinstance(content, str) else json.dumps(content)


def planning_script() -> list[Any]:
    """Read calc.py, try to write (refused: not offered), then finish with the plan."""
    return [tool_use("read_file", {"path": "calc.py"}),
            tool_use("write_file", {"path": "calc.py", "content": "broken\n"}),
            tool_use("finish", {"summary": PLAN})]


def test_a_planning_run_reads_only_posts_the_plan_and_waits_without_a_lease(
        forge_settings: Settings, db: Database, forge: LocalForge, model: FakeAnthropic, tmp_path: Path) -> None:
    forge.create_issue(REPO, 2, ISSUE_TITLE, ISSUE_BODY, labels=("forgecrew", "forgecrew:plan"))
    task_id = make_task(db, repo=REPO, issue_number=2, title=ISSUE_TITLE, body=ISSUE_BODY)
    model.add(*planning_script())
    outcome = run_task(forge_settings, db, forge, task_id)

    assert outcome.state == "awaiting_approval", outcome.reason
    task = load(db, task_id)
    assert task.state == "awaiting_approval" and task.plan == PLAN and task.plan_revision == 1
    assert (task.lease_owner, task.lease_expires_at, task.plan_approved_by) == (None, None, None)
    assert task.events[-1].from_state == "running" and "plan revision 1 posted" in task.events[-1].detail
    requests = model.message_requests
    assert all(tools_offered(r) == ["list_files", "read_file", "search", "finish"] for r in requests)
    assert "you can only read" in requests[0].body["system"][0]["text"]
    refused = requests[2].body["messages"][-1]["content"][0]
    assert refused["is_error"] and "not available" in refused["content"]
    assert forge.pull_requests(REPO) == []
    branches = subprocess.run(["git", "--git-dir", str(forge.bare_path(REPO)), "branch", "--list", "forgecrew/*"],
                              capture_output=True, text=True, check=True).stdout
    assert branches.strip() == ""  # nothing pushed
    issue = forge.issue_record(REPO, 2)
    [plan_comment] = [c for c in issue["comments"] if c["body"].startswith(plans.MARKER)]
    assert PLAN in plan_comment["body"] and "`/forgecrew approve`" in plan_comment["body"]
    [status] = [c for c in issue["comments"] if c["body"].startswith("<!-- forgecrew:progress -->")]
    assert "plan awaiting approval" in status["body"]
    assert "forgecrew:awaiting-approval" in issue["labels"] and "forgecrew:working" not in issue["labels"]
    [run] = task.runs
    assert run.outcome == "awaiting_approval" and run.tests_passed is None

    # the reconciler neither re-sends a waiting task nor reaps it, and no worker can claim it
    class NoBroker(Dispatcher):
        def send(self, *args: Any, **kwargs: Any) -> bool:
            raise AssertionError("a task waiting for approval was sent")

    report = Reconciler(db, NoBroker(db, None)).run_once()  # type: ignore[arg-type]
    assert (report.resent, report.requeued, report.failed) == ([], [], [])
    assert claim(db, task_id, "another-worker") is None
    assert load(db, task_id).state == "awaiting_approval"


def test_the_approved_run_gets_the_plan_and_opens_the_pull_request(
        forge_settings: Settings, db: Database, forge: LocalForge, model: FakeAnthropic) -> None:
    forge.create_issue(REPO, 2, ISSUE_TITLE, ISSUE_BODY, labels=("forgecrew", "forgecrew:plan"))
    task_id = make_task(db, repo=REPO, issue_number=2, title=ISSUE_TITLE, body=ISSUE_BODY)
    model.add(tool_use("finish", {"summary": PLAN}))
    assert run_task(forge_settings, db, forge, task_id).state == "awaiting_approval"
    with db.session() as session:  # what Operations.approve does, without the broker
        row = session.get(Task, task_id)
        assert row is not None
        row.plan_approved_by = "ana"
        transition(session, row, TaskState.QUEUED, actor="comment:ana", detail="plan revision 1 approved by ana")
    model.add(*fixing_script())
    outcome = run_task(forge_settings, db, forge, task_id)
    assert outcome.state == "pr_open", outcome.reason
    approved_first = model.message_requests[1]
    assert "## Approved plan" in first_message(approved_first) and "make `add` return `a + b`" in first_message(
        approved_first)
    assert "write_file" in tools_offered(approved_first) and "run_command" in tools_offered(approved_first)
    # the plan comment is not repeated among the issue's comments: it has its own section
    assert first_message(approved_first).count("make `add` return `a + b`") == 1
    [pr] = forge.pull_requests(REPO)
    assert "Fixes #2" in pr["body"]


def test_a_plan_is_not_asked_for_without_an_issue_to_approve_it_on(
        forge_settings: Settings, db: Database, forge: LocalForge, model: FakeAnthropic, tmp_path: Path) -> None:
    """plan_first in .forgecrew.yml, but a task with no issue: nobody could approve, so the change just runs."""
    task_id = make_task(db, repo=REPO, issue_number=None, title=ISSUE_TITLE, body=ISSUE_BODY)
    held = claim(db, task_id, "test-worker")
    assert held is not None
    pipeline = Pipeline(forge_settings, db, lambda: forge, llm_factory=lambda: None)  # type: ignore[arg-type,return-value]
    assert pipeline._plans_first(pipeline._snapshot(held), forge.get_issue(REPO, 1),
                                 RepoConfig(plan_first=True)) is False
