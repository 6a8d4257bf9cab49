"""What the pipeline hands the agent: the prompt, the specialty's tools and commands, redacted progress."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from common.db import Database
from common.forge.local import LocalForge
from common.settings import Settings, SpecialtyConfig
from common.specialties import DEFAULT_COMMAND_TIMEOUT, profiles
from tests.factories import make_task
from tests.fakes.anthropic_server import DEFAULT_KEY, FakeAnthropic, tool_use
from tests.pipeline_support import GITHUB_TOKEN, REPO, load, pushed_file, run_task
from tests.sample_repo import ISSUE_TITLE, fixing_after_tool_error, fixing_script, last_tool_result, write_sample

pytestmark = pytest.mark.integration


def test_secrets_in_tool_inputs_stay_out_of_the_progress_output(forge_settings: Settings, db: Database,
                                                                 forge: LocalForge, model: FakeAnthropic) -> None:
    shaped = "ghp_" + "A1b2C3d4" * 5  # token-shaped, configured nowhere
    # the configured token straddles the point where progress lines are trimmed
    leak = tool_use("run_command", {"command": f"echo {shaped} {GITHUB_TOKEN} {DEFAULT_KEY} > /dev/null"})
    model.add(leak, *fixing_script())
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE)
    lines: list[str] = []
    assert run_task(forge_settings, db, forge, task_id, progress=lines.append).state == "pr_open"
    shown = "\n".join(lines)
    assert "tool run_command" in shown and "[redacted]" in shown
    pieces = [secret[i:i + 10] for secret in (GITHUB_TOKEN, shaped) for i in range(len(secret) - 10)]
    assert not [piece for piece in pieces if piece in shown], shown


def _with_backend(settings: Settings, **profile: Any) -> Settings:
    """The settings with the backend specialty overridden as forgecrew.toml's [[specialties]] would."""
    return settings.model_copy(update={"specialties": [SpecialtyConfig(name="backend", **profile)]})


def test_prompt_holds_the_file_tree_readme_and_claude_md(forge_settings: Settings, db: Database,
                                                         model: FakeAnthropic, tmp_path: Path) -> None:
    source = write_sample(tmp_path / "with-claude")
    (source / "CLAUDE.md").write_text("Prefer small pure functions.\n")
    forge = LocalForge(forge_settings)
    forge.create_repo("acme/claude", source)
    model.add(*fixing_script())
    task_id = make_task(db, repo="acme/claude", issue_number=None, title=ISSUE_TITLE)
    assert run_task(forge_settings, db, forge, task_id).state == "pr_open"
    prompt = json.dumps(model.message_requests[0].body["messages"][0]["content"])
    assert "## Repository files" in prompt and "calc.py" in prompt and "tests/test_calc.py" in prompt
    assert "## README (start)" in prompt and "A very small calculator." in prompt
    assert "Instructions from CLAUDE.md" in prompt and "Prefer small pure functions." in prompt
    assert "Instructions from AGENTS.md" in prompt


def test_a_tool_outside_the_specialty_allowance_is_an_error_observation(
        forge_settings: Settings, db: Database, forge: LocalForge, model: FakeAnthropic) -> None:
    settings = _with_backend(forge_settings, tools=["list_files", "read_file", "edit_file"])
    model.add(tool_use("run_command", {"command": "touch ran.txt"}),
              fixing_after_tool_error("not available to this specialty"), *fixing_script()[1:])
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE)
    assert run_task(settings, db, forge, task_id).state == "pr_open"
    offered = [tool["name"] for tool in model.message_requests[0].body["tools"]]
    assert offered == ["list_files", "read_file", "edit_file", "finish"]
    workspace = settings.workspace_root / "tasks" / str(task_id) / "repo"
    assert not (workspace / "ran.txt").exists()


def test_a_denied_command_of_the_specialty_is_refused(forge_settings: Settings, db: Database,
                                                      forge: LocalForge, model: FakeAnthropic) -> None:
    settings = _with_backend(forge_settings, denied_commands=["rm"])

    def after_refusal(request: dict[str, Any]) -> Any:
        assert "`rm` is not allowed here" in last_tool_result(request)
        return fixing_script()[0]

    model.add(tool_use("run_command", {"command": "ls && rm -f README.md"}), after_refusal, *fixing_script()[1:])
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE)
    assert run_task(settings, db, forge, task_id).state == "pr_open"
    assert "A very small calculator." in pushed_file(forge, load(db, task_id).branch, "README.md")


def test_the_specialty_command_time_limit_reaches_the_tools(forge_settings: Settings, db: Database,
                                                            forge: LocalForge, model: FakeAnthropic) -> None:
    settings = _with_backend(forge_settings, command_timeout_seconds=1)
    assert profiles(settings)["backend"].command_timeout_seconds == 1
    assert profiles(settings)["frontend"].command_timeout_seconds == DEFAULT_COMMAND_TIMEOUT

    def after_timeout(request: dict[str, Any]) -> Any:
        assert "killed after the 1s time limit" in last_tool_result(request)
        return fixing_script()[0]

    model.add(tool_use("run_command", {"command": "sleep 20; echo finished"}), after_timeout, *fixing_script()[1:])
    task_id = make_task(db, repo=REPO, issue_number=1, title=ISSUE_TITLE)
    started = time.monotonic()
    assert run_task(settings, db, forge, task_id).state == "pr_open"
    assert time.monotonic() - started < 15
