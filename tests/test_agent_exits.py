"""How an agent run ends, through the real anthropic SDK and the fake Messages API: stop reasons and budgets."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from common.db import Database
from common.forge.local import LocalForge
from common.settings import Settings
from tests.factories import make_task
from tests.fakes.anthropic_server import FakeAnthropic, Reply, text, tool_use
from tests.pipeline_support import REPO, load, run_task
from tests.sample_repo import ISSUE_TITLE

pytestmark = pytest.mark.integration
FIX = tool_use("edit_file", {"path": "calc.py", "old_text": "return a - b", "new_text": "return a + b"})


def _last_user_text(request: dict[str, Any]) -> str:
    return json.dumps(request["messages"][-1]["content"])


def test_text_only_end_turn_finishes_like_the_finish_tool(forge_settings: Settings, db: Database,
                                                           forge: LocalForge, model: FakeAnthropic) -> None:
    model.add(FIX, text("I changed `add` to return the sum; the unit test covers it."))
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE)
    outcome = run_task(forge_settings, db, forge, task_id)
    assert outcome.state == "pr_open", outcome.reason
    [pr] = forge.pull_requests(REPO)
    assert "I changed `add` to return the sum" in pr["body"] and not pr["draft"]
    assert load(db, task_id).runs[0].turns == 2


def test_reply_cut_off_at_max_tokens_is_continued_not_published(forge_settings: Settings, db: Database,
                                                                 forge: LocalForge, model: FakeAnthropic) -> None:
    truncated = Reply([{"type": "text", "text": "Here is what I changed: the add funct"},
                       {"type": "tool_use", "name": "finish", "input": {"summary": "Half a summ"}}], "max_tokens")

    def after_cut_off(request: dict[str, Any]) -> Reply:
        sent = _last_user_text(request)
        assert "cut off at the max_tokens limit" in sent and "not run" in sent
        return tool_use("finish", {"summary": "Fixed `add` to return the sum."})

    model.add(FIX, truncated, after_cut_off)
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE)
    outcome = run_task(forge_settings, db, forge, task_id)
    assert outcome.state == "pr_open", outcome.reason
    [pr] = forge.pull_requests(REPO)
    assert "Fixed `add` to return the sum." in pr["body"] and "Half a summ" not in pr["body"]
    assert load(db, task_id).runs[0].turns == 3  # the cut-off reply counts as a turn


def test_text_cut_off_by_the_output_budget_ends_the_run(forge_settings: Settings, db: Database,
                                                        forge: LocalForge, model: FakeAnthropic) -> None:
    settings = forge_settings.model_copy(update={"max_output_tokens": 200})
    model.add(FIX, text("The fix: " + "details " * 300, stop_reason="max_tokens"))
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE)
    outcome = run_task(settings, db, forge, task_id)
    assert outcome.state == "failed" and "output token budget exhausted" in outcome.reason
    task = load(db, task_id)
    assert task.state == "failed" and "FORGECREW_MAX_OUTPUT_TOKENS=200" in task.failure_reason
    assert model.message_requests[-1].body["max_tokens"] < 200  # the budget shrank the call's limit
    assert forge.pull_requests(REPO) == []


def test_refusal_fails_the_run_and_says_so(forge_settings: Settings, db: Database, forge: LocalForge,
                                           model: FakeAnthropic) -> None:
    model.add(FIX, Reply([{"type": "text", "text": "I can't help with that."}], "refusal"))
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE)
    outcome = run_task(forge_settings, db, forge, task_id)
    assert outcome.state == "failed" and outcome.reason.startswith("model refused")
    task = load(db, task_id)
    assert task.state == "failed" and "refusal" in task.failure_reason
    assert "model refused" in forge.issue_record(REPO, 1)["comments"][-1]["body"]
    assert forge.pull_requests(REPO) == []


@pytest.mark.parametrize(("update", "first_reply_delay", "reason", "variable"), [
    ({"max_cost_usd": 1e-9}, 0.0, "cost budget exhausted", "FORGECREW_MAX_COST_USD"),
    ({"max_wall_seconds": 1}, 1.2, "time budget exhausted", "FORGECREW_MAX_WALL_SECONDS=1"),
    ({"max_output_tokens": 10}, 0.0, "output token budget exhausted", "FORGECREW_MAX_OUTPUT_TOKENS=10"),
])
def test_each_budget_ends_the_run_with_its_reason(forge_settings: Settings, db: Database, forge: LocalForge,
                                                  model: FakeAnthropic, update: dict[str, Any],
                                                  first_reply_delay: float, reason: str, variable: str) -> None:
    settings = forge_settings.model_copy(update=update)
    model.add(dataclasses.replace(tool_use("list_files", {"path": "."}), delay=first_reply_delay),
              tool_use("list_files", {"path": "."}))
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE)
    outcome = run_task(settings, db, forge, task_id)
    assert outcome.state == "failed" and reason in outcome.reason
    task = load(db, task_id)
    assert task.state == "failed" and reason in task.failure_reason and variable in task.failure_reason
    assert task.events[-1].to_state == "failed" and reason in task.events[-1].detail
    assert task.runs[0].outcome == "failed" and task.runs[0].turns == 1
    assert len(model.message_requests) == 1
    assert forge.pull_requests(REPO) == []
