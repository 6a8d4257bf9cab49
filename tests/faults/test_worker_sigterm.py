"""Fault 9: a worker sent SIGTERM (a deploy) mid-task finishes it, or its task goes back to the queue."""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.db import Database
from common.settings import Settings
from tests.conftest import settings_env
from tests.fakes.anthropic_server import FakeAnthropic
from tests.faults.support import (Forge, await_ready, deliver, holder, kill, queued_messages, record_fault,
                                  serve_per_issue, spawn_workers, task_of_issue, wait_final)
from tests.sample_repo import ISSUE_BODY, ISSUE_TITLE, fixing_script
from tests.support import Process, labeled_issue, start_coordinator, wait_for

pytestmark = pytest.mark.integration
# How long the supervisor lets a stopping worker finish before SIGKILL (docker's stop_grace_period,
# systemd's TimeoutStopSec); short here, so the slow case below outlasts it.
STOP_WINDOW_SECONDS = 3.0


@dataclasses.dataclass
class Deploy:
    """SIGTERMs the worker holding the task from inside the model's request, once."""

    db: Database
    workers: list[Process]
    stopped: Process | None = None
    at: float = 0.0

    def stop_holder(self) -> None:
        self.stopped = holder(self.db, task_of_issue(self.db, 1), self.workers)
        kill(self.stopped, signal.SIGTERM)
        self.at = time.monotonic()


def run_cluster(settings: Settings, tmp_path: Path, processes: list[Process], workers: list[Process],
                count: int) -> int:
    """A coordinator, `count` backend workers, and the issue delivered; the task's id."""
    env = settings_env(settings)
    booting = spawn_workers(env, tmp_path, "backend", count, processes)
    coordinator, url = start_coordinator(env, tmp_path)
    processes.append(coordinator)
    workers.extend(await_ready(booting))
    response = deliver(url, labeled_issue("forgecrew:backend", title=ISSUE_TITLE, body=ISSUE_BODY))
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


def test_worker_sigterm_mid_task_finishes_it_then_exits(fault_settings: Callable[..., Settings], db: Database,
                                                       model: FakeAnthropic, forge: Forge, tmp_path: Path,
                                                       processes: list[Process]) -> None:
    """Warm shutdown: the worker takes nothing new, finishes the running task on its attempt, exits 0."""
    workers: list[Process] = []
    deploy = Deploy(db, workers)

    def first_turn(body: dict[str, Any]) -> Any:
        if deploy.stopped is None:
            deploy.stop_holder()
        return fixing_script()[0]

    serve_per_issue(model, {ISSUE_TITLE: [first_turn, *fixing_script()[1:]]})
    forge.add_issue(1, ISSUE_TITLE, ISSUE_BODY)
    task_id = run_cluster(fault_settings(), tmp_path, processes, workers, count=1)
    end = wait_final(db, task_id)
    assert deploy.stopped is not None
    status = deploy.stopped.popen.wait(timeout=60)
    drained = time.monotonic() - deploy.at
    pulls = forge.pulls()
    record_fault("9a worker SIGTERM mid-task, finished in the window", recovered=drained,
                 lost=int(end.state != "pr_open"), duplicated=max(len(pulls) - 1, 0) + max(len(end.runs) - 1, 0),
                 exit_status=status)
    assert end.state == "pr_open", (end.failure_reason, end.details(), deploy.stopped.log()[-3000:])
    assert end.runs == [(1, "pr_open")] and len(pulls) == 1 and list(forge.branches()) == [end.branch]
    assert status == 0 and "Warm shutdown" in deploy.stopped.log()
    assert queued_messages(fault_settings()) == []  # acked: nothing left for a worker to take again


def test_worker_sigterm_past_the_window_task_goes_back_to_the_queue(fault_settings: Callable[..., Settings],
                                                                   db: Database, model: FakeAnthropic,
                                                                   forge: Forge, tmp_path: Path,
                                                                   processes: list[Process]) -> None:
    """The task outlasts the stop window and the supervisor SIGKILLs the worker: the task's lease runs
    out and another worker runs it; one run publishes, one PR."""
    workers: list[Process] = []
    deploy = Deploy(db, workers)

    def first_turn(body: dict[str, Any]) -> Any:
        if deploy.stopped is None:
            deploy.stop_holder()
            return dataclasses.replace(fixing_script()[0], delay=STOP_WINDOW_SECONDS + 30)  # a long turn
        return fixing_script()[0]

    serve_per_issue(model, {ISSUE_TITLE: [first_turn, *fixing_script()[1:]]})
    forge.add_issue(1, ISSUE_TITLE, ISSUE_BODY)
    task_id = run_cluster(fault_settings(), tmp_path, processes, workers, count=2)
    wait_for(lambda: deploy.stopped, timeout=60, what="the deploy's SIGTERM")
    assert deploy.stopped is not None
    time.sleep(max(deploy.at + STOP_WINDOW_SECONDS - time.monotonic(), 0))  # the supervisor's window
    still_running = deploy.stopped.alive()
    kill(deploy.stopped)  # the window is over: SIGKILL, the whole group
    end = wait_final(db, task_id)
    recovered = time.monotonic() - deploy.at
    pulls, branches = forge.pulls(), forge.branches()
    record_fault("9b worker SIGTERM mid-task, SIGKILL after the window", recovered=recovered,
                 lost=int(end.state != "pr_open"), duplicated=max(len(pulls) - 1, 0) + max(len(branches) - 1, 0),
                 window_seconds=STOP_WINDOW_SECONDS)
    assert still_running, deploy.stopped.log()[-3000:]  # it was draining, not gone at the first signal
    assert end.state == "pr_open", (end.failure_reason, end.details())
    assert end.attempt == 2 and end.runs == [(1, "lost"), (2, "pr_open")]
    assert "expired on attempt 1; requeued" in end.details()
    assert len(pulls) == 1 and list(forge.branches()) == [end.branch] and forge.pr_creations() == 1
