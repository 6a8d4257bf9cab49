"""The worker pipeline in process: real PostgreSQL, real git, the local forge, a fake model server."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from common.db import Database
from common.forge.local import LocalForge
from common.leases import claim
from common.models import Task, TaskRun
from common.settings import Settings
from common.states import TaskState
from common.transitions import transition
from tests.factories import make_task
from tests.fakes.anthropic_server import DEFAULT_KEY, FakeAnthropic, error, tool_use
from tests.pipeline_support import GITHUB_TOKEN, REPO, load, pushed_file, run_task
from tests.sample_repo import ISSUE_BODY, ISSUE_TITLE, fixing_after_tool_error, fixing_script, last_tool_result
from workers.pipeline import Pipeline

pytestmark = pytest.mark.integration


def test_issue_becomes_a_pull_request_with_passing_tests(forge_settings: Settings, db: Database,
                                                         forge: LocalForge, model: FakeAnthropic) -> None:
    model.add(*fixing_script())
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE, body=ISSUE_BODY)
    outcome = run_task(forge_settings, db, forge, task_id)
    assert outcome.state == "pr_open", outcome.reason
    task = load(db, task_id)
    assert task.branch == "forgecrew/issue-1-add-subtracts-instead-of-adding"
    assert "return a + b" in pushed_file(forge, task.branch, "calc.py")
    [pr] = forge.pull_requests(REPO)
    assert task.pr_url == pr["url"] == f"local://{REPO}/pull/{pr['number']}"
    assert not pr["draft"] and "Fixes #1" in pr["body"] and "passed" in pr["body"] and "`calc.py`" in pr["body"]
    assert pr.get("labels", []) == []
    issue = forge.issue_record(REPO, 1)
    assert "forgecrew:pr-open" in issue["labels"] and "forgecrew:working" not in issue["labels"]
    assert any(pr["url"] in comment["body"] for comment in issue["comments"])
    states = [e.to_state for e in task.events]
    assert states[-3:] == ["running", "testing", "pr_open"]
    [run] = task.runs
    assert run.outcome == "pr_open" and run.tests_passed and run.turns == 4 and run.sandbox == "bubblewrap"
    assert task.input_tokens > 0 and task.output_tokens > 0
    assert task.cache_write_tokens > 0 and task.cache_read_tokens > 0  # system and tools re-read from the cache
    assert task.cost_usd is not None and task.cost_usd > 0
    first = model.message_requests[0].body
    assert first["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert first["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    prompt = first["messages"][0]["content"]
    prompt = prompt if isinstance(prompt, str) else json.dumps(prompt)
    assert ISSUE_TITLE in prompt and "Run the unit tests before finishing." in prompt  # AGENTS.md
    assert "Keep the docstring." in prompt  # .forgecrew.yml instructions


def test_failing_tests_go_back_to_the_agent_for_repair(forge_settings: Settings, db: Database,
                                                        forge: LocalForge, model: FakeAnthropic) -> None:
    def repair(request: Any) -> Any:
        text = json.dumps(request["messages"][-1]["content"])
        assert "tests failed" in text and "AssertionError" in text
        return tool_use("edit_file", {"path": "calc.py", "old_text": "return a * b", "new_text": "return a + b"})

    model.add(tool_use("edit_file", {"path": "calc.py", "old_text": "return a - b", "new_text": "return a * b"}),
              tool_use("finish", {"summary": "multiplied"}), repair, tool_use("finish", {"summary": "Now adds."}))
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE)
    outcome = run_task(forge_settings, db, forge, task_id)
    assert outcome.state == "pr_open", outcome.reason
    states = [e.to_state for e in load(db, task_id).events]
    assert states[-5:] == ["running", "testing", "running", "testing", "pr_open"]
    assert not forge.pull_requests(REPO)[0]["draft"]


def test_tests_still_failing_opens_a_draft(forge_settings: Settings, db: Database, forge: LocalForge,
                                           model: FakeAnthropic) -> None:
    wrong = tool_use("edit_file", {"path": "calc.py", "old_text": "return a - b", "new_text": "return b - a"})
    model.add(wrong, tool_use("finish", {"summary": "swapped"}), tool_use("finish", {"summary": "gave up"}))
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE)
    outcome = run_task(forge_settings, db, forge, task_id)
    assert outcome.state == "pr_open"
    [pr] = forge.pull_requests(REPO)
    assert pr["draft"] and "failed" in pr["body"] and pr["labels"] == ["forgecrew:tests-failing"]
    assert "draft" in load(db, task_id).events[-1].detail.lower()


def test_model_error_mid_run_fails_with_a_comment(forge_settings: Settings, db: Database, forge: LocalForge,
                                                   model: FakeAnthropic) -> None:
    model.add(tool_use("read_file", {"path": "calc.py"}),
              error(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"))
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE)
    outcome = run_task(forge_settings, db, forge, task_id)
    assert outcome.state == "failed"
    task = load(db, task_id)
    assert task.state == "failed" and "model error" in task.failure_reason and "prompt is too long" in task.failure_reason
    issue = forge.issue_record(REPO, 1)
    assert "forgecrew:failed" in issue["labels"]
    assert "prompt is too long" in issue["comments"][-1]["body"]
    assert task.runs[0].outcome == "failed" and task.runs[0].input_tokens > 0  # the turn before still counts
    assert forge.pull_requests(REPO) == []


def test_clone_failure_is_recorded(forge_settings: Settings, db: Database, forge: LocalForge) -> None:
    task_id = make_task(db, repo="acme/missing", issue_number=3, title="x")
    outcome = run_task(forge_settings, db, forge, task_id)
    assert outcome.state == "failed" and outcome.reason.startswith("clone failed")
    assert load(db, task_id).failure_reason.startswith("clone failed")


def test_turn_budget_ends_the_run(make_settings: Callable[..., Settings], forge_settings: Settings,
                                  db: Database, forge: LocalForge, model: FakeAnthropic) -> None:
    settings = forge_settings.model_copy(update={"max_turns": 2})
    model.add(*[tool_use("list_files", {"path": "."}) for _ in range(3)])
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE)
    outcome = run_task(settings, db, forge, task_id)
    assert outcome.state == "failed" and "turn budget exhausted" in outcome.reason
    assert "FORGECREW_MAX_TURNS" in load(db, task_id).failure_reason
    assert len(model.message_requests) == 2


def test_path_escape_is_a_tool_error_not_a_crash(forge_settings: Settings, db: Database, forge: LocalForge,
                                                 model: FakeAnthropic) -> None:
    model.add(tool_use("read_file", {"path": "../../../../etc/passwd"}), fixing_after_tool_error("outside"),
              *fixing_script()[1:])
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE)
    assert run_task(forge_settings, db, forge, task_id).state == "pr_open"


def test_secrets_stay_out_of_tools_workspace_transcript_and_pr(forge_settings: Settings, db: Database,
                                                               forge: LocalForge, model: FakeAnthropic,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", GITHUB_TOKEN)
    monkeypatch.setenv("FORGECREW_ANTHROPIC_API_KEY", DEFAULT_KEY)

    def after_env(request: Any) -> Any:
        output = last_tool_result(request)
        assert "HOME=" in output  # the command really ran
        assert GITHUB_TOKEN not in output and DEFAULT_KEY not in output and "FORGECREW_" not in output
        return fixing_script()[0]

    model.add(tool_use("run_command", {"command": "env; git config --list"}), after_env, *fixing_script()[1:])
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE, body=f"token {GITHUB_TOKEN} leaked here")
    assert run_task(forge_settings, db, forge, task_id).state == "pr_open"
    workspace = forge_settings.workspace_root / "tasks" / str(task_id)
    for path in workspace.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert GITHUB_TOKEN.encode() not in data and DEFAULT_KEY.encode() not in data, path
    transcript = (workspace / "transcript.jsonl").read_text()
    assert "read_file" in transcript and GITHUB_TOKEN not in transcript
    pr = forge.pull_requests(REPO)[0]
    assert GITHUB_TOKEN not in json.dumps(pr)


def test_retried_task_updates_the_same_branch_and_pr(forge_settings: Settings, db: Database, forge: LocalForge,
                                                     model: FakeAnthropic) -> None:
    model.add(*fixing_script(), *fixing_script("return b + a"))
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE)
    assert run_task(forge_settings, db, forge, task_id).state == "pr_open"
    assert claim(db, task_id, "redelivered") is None  # a redelivered message finds nothing to run
    with db.session() as session:
        transition(session, session.get(Task, task_id), TaskState.QUEUED, actor="test", detail="retry")
    second = run_task(forge_settings, db, forge, task_id)
    assert second.state == "pr_open" and second.pr is not None and not second.pr.created
    [pr] = forge.pull_requests(REPO)
    task = load(db, task_id)
    assert "return b + a" in pushed_file(forge, task.branch, "calc.py")
    assert task.pr_number == pr["number"] and len(task.runs) == 2
    with db.session() as session:
        runs = session.query(TaskRun).filter_by(task_id=task_id).order_by(TaskRun.id).all()
        assert [r.attempt for r in runs] == [1, 2]
    transcript = forge_settings.workspace_root / "tasks" / str(task_id) / "transcript.jsonl"
    starts = [entry for entry in map(json.loads, transcript.read_text().splitlines()) if entry["kind"] == "run"]
    assert [(entry["run_id"], entry["attempt"]) for entry in starts] == [(runs[0].id, 1), (runs[1].id, 2)]
    assert {r.transcript_path for r in runs} == {str(transcript)}  # both runs kept, in one file


def test_push_rejected_fails_with_the_forge_reason(forge_settings: Settings, db: Database, forge: LocalForge,
                                                  model: FakeAnthropic) -> None:
    """Someone pushes to the task's branch while the agent works: the push must not overwrite it."""
    bare = str(forge.bare_path(REPO))
    branch = "forgecrew/issue-1-add-subtracts-instead-of-adding"

    def a_person_pushes(request: Any) -> Any:
        subprocess.run(["git", "--git-dir", bare, "update-ref", f"refs/heads/{branch}", "main"], check=True)
        return fixing_script()[-1]

    model.add(*fixing_script()[:-1], a_person_pushes)
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE)
    outcome = run_task(forge_settings, db, forge, task_id)
    assert outcome.state == "failed"
    assert "rejected" in outcome.reason and "someone else pushed to it" in outcome.reason
    assert "someone else pushed to it" in forge.issue_record(REPO, 1)["comments"][-1]["body"]
    assert forge.pull_requests(REPO) == []
    main = subprocess.run(["git", "--git-dir", bare, "rev-parse", "main"], capture_output=True, text=True).stdout
    assert pushed_file(forge, branch, "calc.py") == pushed_file(forge, "main", "calc.py") and main  # untouched


def test_missing_forge_setting_fails_the_task_cleanly(forge_settings: Settings, db: Database) -> None:
    from common.forge.factory import make_forge

    settings = forge_settings.model_copy(update={"forge": "github", "github_token": None})
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE)
    held = claim(db, task_id, "test-worker")
    outcome = Pipeline(settings, db, lambda: make_forge(settings), llm_factory=lambda: None).run(held)  # type: ignore[arg-type,return-value]
    assert outcome.state == "failed" and "FORGECREW_GITHUB_TOKEN" in outcome.reason
    task = load(db, task_id)
    assert task.state == "failed" and task.lease_owner is None and task.runs[0].outcome == "failed"


def test_an_unsandboxed_run_is_recorded_loudly_and_still_leaves_nothing_running(
        forge_settings: Settings, db: Database, forge: LocalForge, model: FakeAnthropic) -> None:
    """COMMAND_SANDBOX=none is the operator's choice; the task's record says so, and daemons still die."""
    import uuid

    from tests.cli_support import show_task

    mark = f"{100 + uuid.uuid4().int % 800}.{uuid.uuid4().int % 10**6}"
    seen: list[str] = []

    def after_the_daemon(request: Any) -> Any:
        seen.append(last_tool_result(request))
        return fixing_script()[0]

    model.add(tool_use("run_command", {"command": f"setsid sleep {mark} & (sleep {mark} &); echo started"}),
              after_the_daemon, *fixing_script()[1:])
    settings = forge_settings.model_copy(update={"command_sandbox": "none"})
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE, body=ISSUE_BODY)
    outcome = run_task(settings, db, forge, task_id)
    assert outcome.state == "pr_open", outcome.reason
    assert "started" in seen[0] and "were stopped when it returned" in seen[0]
    listing = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True).stdout
    assert [line for line in listing.splitlines() if f"sleep {mark}" in line and not line.startswith("Z")] == []
    task = load(db, task_id)
    assert task.runs[0].sandbox == "none"
    assert any("UNSANDBOXED" in (event.detail or "") for event in task.events)
    shown = show_task(settings, task_id)
    assert "sandbox none" in shown and "(commands ran UNSANDBOXED)" in shown
