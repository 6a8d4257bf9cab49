"""Fault 11: the workspace disk fills up (a 20 MB tmpfs as FORGECREW_WORKSPACE_ROOT) under one task."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from common.db import Database
from common.settings import Settings
from tests.conftest import settings_env
from tests.fakes.anthropic_server import FakeAnthropic, tool_use
from tests.faults.services import tmpfs, tmpfs_allowed
from tests.faults.support import REPO, Forge, deliver, record_fault, serve_per_issue, wait_final
from tests.sample_repo import ISSUE_BODY, fixing_script
from tests.support import Process, labeled_issue, start_coordinator, start_worker

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not tmpfs_allowed(), reason="mounting a tmpfs needs root (CI runs as root)")]
FILLER = "write a huge fixture file"
AFTER = "add() subtracts, found after the disk filled"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "workspaces", "20m") as root:
        yield root


def test_disk_full_fails_that_task_with_the_reason_and_the_worker_goes_on(
        fault_settings: Callable[..., Settings], db: Database, model: FakeAnthropic, forge: Forge,
        small_disk: Path, tmp_path: Path, processes: list[Process]) -> None:
    fill = tool_use("run_command", {"command": "head -c 40000000 /dev/zero > fixture.bin; ls -l fixture.bin"})
    serve_per_issue(model, {FILLER: [fill, tool_use("finish", {"summary": "Added the fixture."})],
                            AFTER: fixing_script()})
    forge.add_issue(1, FILLER, ISSUE_BODY)
    forge.add_issue(2, AFTER, ISSUE_BODY)
    env = settings_env(fault_settings(workspace_root=small_disk))
    coordinator, url = start_coordinator(env, tmp_path)
    processes.append(coordinator)
    worker = start_worker(env, tmp_path, "backend", "--concurrency", "2")
    processes.append(worker)
    started = time.monotonic()
    response = deliver(url, labeled_issue("forgecrew:backend", number=1, title=FILLER, body=ISSUE_BODY))
    assert response.status_code == 202, response.text
    full = wait_final(db, response.json()["task_id"])
    failed_after = time.monotonic() - started
    response = deliver(url, labeled_issue("forgecrew:backend", number=2, title=AFTER, body=ISSUE_BODY))
    assert response.status_code == 202, response.text
    after = wait_final(db, response.json()["task_id"])
    elapsed = time.monotonic() - started
    record_fault("11 workspace disk full", recovered=elapsed, lost=int(after.state != "pr_open"), duplicated=0,
                 failed_after_seconds=round(failed_after, 1), free_mb_after=shutil.disk_usage(small_disk).free >> 20)
    assert full.state == "failed" and full.runs == [(1, "failed")], full.details()
    assert full.failure_reason and full.failure_reason.startswith(
        f"the workspace disk is full (No space left on device under FORGECREW_WORKSPACE_ROOT={small_disk})")
    assert "its workspace was removed to free the disk" in full.failure_reason
    said = "\n".join(comment["body"] for comment in forge.github.issue(REPO, 1).comments)
    assert "the workspace disk is full" in said and "forgecrew:failed" in forge.github.issue(REPO, 1).labels
    assert after.state == "pr_open" and after.runs == [(1, "pr_open")], (after.failure_reason, after.details())
    assert worker.alive() and len(forge.pulls()) == 1
