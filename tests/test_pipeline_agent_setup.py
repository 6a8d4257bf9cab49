"""What the pipeline hands the agent: the prompt, the specialty's tools and commands, redacted progress."""

from __future__ import annotations

import time
from typing import Any

import pytest

from common.db import Database
from common.forge.local import LocalForge
from common.settings import Settings, SpecialtyConfig
from common.specialties import DEFAULT_COMMAND_TIMEOUT, profiles
from tests.factories import make_task
from tests.fakes.anthropic_server import DEFAULT_KEY, FakeAnthropic, tool_use
from tests.pipeline_support import GITHUB_TOKEN, REPO, run_task
from tests.sample_repo import ISSUE_TITLE, fixing_script, last_tool_result

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
