"""Publishing from the pipeline: fenced by the lease."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.db import Database
from common.forge.local import LocalForge
from common.models import Task
from common.settings import Settings
from tests.factories import make_task
from tests.fakes.anthropic_server import FakeAnthropic, tool_use
from tests.pipeline_support import REPO, load, run_task
from tests.sample_repo import ISSUE_TITLE, fixing_script, write_sample

pytestmark = pytest.mark.integration


def _take_over(db: Database, task_id: int, reply: Any) -> Callable[[dict[str, Any]], Any]:
    """A model turn during which another worker takes the task over (a new fencing token)."""

    def turn(request: dict[str, Any]) -> Any:
        with db.session() as session:
            session.get(Task, task_id).lease_token += 1
        return reply

    return turn


def _branches(bare: Path) -> str:
    return subprocess.run(["git", "--git-dir", str(bare), "branch", "--list", "forgecrew/*"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_lease_taken_over_mid_run_neither_pushes_nor_opens_a_pr(forge_settings: Settings, db: Database,
                                                               model: FakeAnthropic, tmp_path: Path) -> None:
    source = tmp_path / "notes"
    source.mkdir()
    (source / "notes.txt").write_text("hello\n")  # nothing here for detect_test_command: no test run
    forge = LocalForge(forge_settings)
    bare = forge.create_repo("acme/notes", source)
    forge.create_issue("acme/notes", 1, "Say goodbye", "notes.txt should say goodbye")
    task_id = make_task(db, repo="acme/notes", issue_number=1, title="Say goodbye")
    model.add(tool_use("write_file", {"path": "notes.txt", "content": "goodbye\n"}),
              _take_over(db, task_id, tool_use("finish", {"summary": "Says goodbye."})))
    outcome = run_task(forge_settings, db, forge, task_id)
    assert outcome.state == "lease_lost", outcome.reason
    assert _branches(bare) == "" and forge.pull_requests("acme/notes") == []
    assert not any("pull request" in c["body"] for c in forge.issue_record("acme/notes", 1)["comments"])
    task = load(db, task_id)
    assert task.state == "running" and task.pr_url is None  # left to the new holder


def test_lease_taken_over_before_the_tests_runs_no_tests(forge_settings: Settings, db: Database,
                                                         model: FakeAnthropic, tmp_path: Path) -> None:
    source = write_sample(tmp_path / "sample")
    (source / ".forgecrew.yml").write_text("test_command: touch ../tests-ran && python3 -m unittest\n")
    forge = LocalForge(forge_settings)
    bare = forge.create_repo(REPO, source)
    task_id = make_task(db, repo=REPO, issue_number=None, title=ISSUE_TITLE)
    read, fix, _, finish = fixing_script()  # the take-over comes with finish, instead of a test run
    model.add(read, fix, _take_over(db, task_id, finish))
    outcome = run_task(forge_settings, db, forge, task_id)
    assert outcome.state == "lease_lost", outcome.reason
    assert not (forge_settings.workspace_root / "tasks" / str(task_id) / "tests-ran").exists()
    assert _branches(bare) == ""
