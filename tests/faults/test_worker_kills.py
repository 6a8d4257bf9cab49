"""Faults 1 and 2: workers SIGKILLed mid-agent, between push and PR, and by a poison task every time."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.db import Database
from common.settings import Settings
from tests.conftest import settings_env
from tests.fakes.anthropic_server import FakeAnthropic, text
from tests.faults.support import (REPO, Forge, await_ready, deliver, holder, kill, record_fault, serve_per_issue,
                                  spawn_workers, story, task_of_issue, wait_final)
from tests.sample_repo import ISSUE_BODY, ISSUE_TITLE, fixing_script
from tests.support import Process, labeled_issue, start_coordinator, wait_for

pytestmark = pytest.mark.integration
POISON_TITLE = "parse() crashes the worker"
POISON_BODY = "Every run of this one takes its worker down with it."
LATE_TITLE = "add() needs a docstring test"


class Killer:
    """Kills the worker holding an issue's task from inside a fake server's request: the exact moment."""

    def __init__(self, db: Database, workers: list[Process]) -> None:
        self.db, self.workers = db, workers
        self.kills: list[float] = []  # time.monotonic() of each kill

    def kill_holder(self, issue: int) -> None:
        proc = holder(self.db, task_of_issue(self.db, issue), self.workers)
        kill(proc)
        proc.popen.wait(timeout=30)
        self.kills.append(time.monotonic())


def cluster(settings: Settings, tmp_path: Path, processes: list[Process], workers: list[Process], *,
            count: int = 2) -> str:
    """A coordinator (with its reconciler) and `count` backend workers; the coordinator's URL."""
    env = settings_env(settings)
    booting = spawn_workers(env, tmp_path, "backend", count, processes)
    coordinator, url = start_coordinator(env, tmp_path)
    processes.append(coordinator)
    workers.extend(await_ready(booting))
    return url


def start_issue(url: str, number: int, title: str, body: str) -> int:
    """Deliver the issue's `forgecrew:backend` label; the new task's id."""
    response = deliver(url, labeled_issue("forgecrew:backend", number=number, title=title, body=body))
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


def test_worker_sigkilled_mid_agent_task_finishes_on_another(fault_settings: Callable[..., Settings], db: Database,
                                                            model: FakeAnthropic, forge: Forge, tmp_path: Path,
                                                            processes: list[Process]) -> None:
    workers: list[Process] = []
    killer = Killer(db, workers)

    def first_turn(body: dict[str, Any]) -> Any:
        if not killer.kills:
            killer.kill_holder(1)  # the agent asked the model for its first turn and died there
            return text("nobody reads this")
        return fixing_script()[0]

    serve_per_issue(model, {ISSUE_TITLE: [first_turn, *fixing_script()[1:]]})
    forge.add_issue(1, ISSUE_TITLE, ISSUE_BODY)
    url = cluster(fault_settings(), tmp_path, processes, workers)
    task_id = start_issue(url, 1, ISSUE_TITLE, ISSUE_BODY)
    end = wait_final(db, task_id)
    recovered = time.monotonic() - killer.kills[0]
    branches, pulls = forge.branches(), forge.pulls()
    record_fault("1a worker SIGKILL mid-agent", recovered=recovered, lost=int(end.state != "pr_open"),
                 duplicated=max(len(pulls) - 1, 0) + max(len(branches) - 1, 0), attempts=end.attempt)
    assert end.state == "pr_open", (end.failure_reason, end.details())
    assert end.attempt == 2 and end.runs == [(1, "lost"), (2, "pr_open")]
    assert "expired on attempt 1; requeued" in end.details()
    [(actor, detail)] = [(a, d) for to, a, d in end.events if "expired" in d]
    assert actor == "reconciler" and "lease of backend-" in detail
    assert list(branches) == [end.branch] and "return a + b" in forge.file_at(end.branch, "calc.py")
    [pr] = pulls
    assert pr.number == end.pr_number and pr.head == end.branch and forge.pr_creations() == 1


@pytest.mark.parametrize("served", [False, True], ids=["before-pr-created", "pr-created-reply-lost"])
def test_worker_sigkilled_between_push_and_pr_makes_one_branch_and_one_pr(
        served: bool, fault_settings: Callable[..., Settings], db: Database, model: FakeAnthropic, forge: Forge,
        tmp_path: Path, processes: list[Process]) -> None:
    """The branch is pushed, then the worker dies on its PR request: before GitHub acts on it, or after
    (the PR exists, the answer never came back). The next attempt reuses both, forcing over nothing."""
    workers: list[Process] = []
    killer = Killer(db, workers)
    pushed: dict[str, str] = {}

    def at_pr_request() -> None:
        pushed.update(forge.branches())
        killer.kill_holder(1)

    forge.github.fail_next("POST", rf"/repos/{REPO}/pulls$", 502,
                           after_serving=served, before=at_pr_request)
    serve_per_issue(model, {ISSUE_TITLE: fixing_script()})  # each attempt plays the whole script
    forge.add_issue(1, ISSUE_TITLE, ISSUE_BODY)
    url = cluster(fault_settings(), tmp_path, processes, workers)
    task_id = start_issue(url, 1, ISSUE_TITLE, ISSUE_BODY)
    end = wait_final(db, task_id)
    recovered = time.monotonic() - killer.kills[0]
    branches, pulls = forge.branches(), forge.pulls()
    record_fault(f"1b worker SIGKILL between push and PR ({'after' if served else 'before'} GitHub created it)",
                 recovered=recovered, lost=int(end.state != "pr_open"),
                 duplicated=max(len(pulls) - 1, 0) + max(len(branches) - 1, 0), attempts=end.attempt)
    assert end.state == "pr_open", (end.failure_reason, end.details())
    assert list(pushed) == [end.branch]  # attempt 1 had pushed when it died
    # what attempt 2 replaced was attempt 1's own commit on main, nobody else's
    bot = fault_settings().bot_name
    assert forge.authors_since_main(pushed[end.branch]) == [bot] == forge.authors_since_main(end.branch)
    assert end.attempt == 2 and end.runs == [(1, "lost"), (2, "pr_open")]
    assert "expired on attempt 1; requeued" in end.details()
    assert list(branches) == [end.branch] and "return a + b" in forge.file_at(end.branch, "calc.py")
    [pr] = pulls
    assert pr.number == end.pr_number and pr.head == end.branch and pr.state == "open"
    assert len(forge.github.calls("POST", r"/pulls$")) == (1 if served else 2)  # found, not made again
    assert forge.github.violations == []


def test_poison_task_fails_after_max_attempts_while_others_flow(fault_settings: Callable[..., Settings],
                                                                db: Database, model: FakeAnthropic, forge: Forge,
                                                                tmp_path: Path, processes: list[Process]) -> None:
    """A task that kills every worker that runs it: three attempts, then failed with the reason; the
    other tasks on its queue, one sent while it was being retried, get their PRs."""
    workers: list[Process] = []
    killer = Killer(db, workers)

    def poison(body: dict[str, Any]) -> Any:
        killer.kill_holder(2)
        return text("nobody reads this")

    serve_per_issue(model, {ISSUE_TITLE: fixing_script(), LATE_TITLE: fixing_script(), POISON_TITLE: [poison]})
    for number, title, body in ((1, ISSUE_TITLE, ISSUE_BODY), (2, POISON_TITLE, POISON_BODY),
                                (3, LATE_TITLE, ISSUE_BODY)):
        forge.add_issue(number, title, body)
    # three workers for the poison to kill, and one that survives it
    url = cluster(fault_settings(max_attempts=3), tmp_path, processes, workers, count=4)
    started = time.monotonic()
    poison_id = start_issue(url, 2, POISON_TITLE, POISON_BODY)
    first_id = start_issue(url, 1, ISSUE_TITLE, ISSUE_BODY)
    wait_for(lambda: killer.kills, timeout=60, what="the poison's first kill")
    late_id = start_issue(url, 3, LATE_TITLE, ISSUE_BODY)  # queued while the poison is retried
    poisoned = wait_final(db, poison_id, timeout=180)
    failed_after = time.monotonic() - started
    good = [wait_final(db, task_id) for task_id in (first_id, late_id)]
    pulls = forge.pulls()
    record_fault("2 poison task kills its worker every time", recovered=failed_after,
                 lost=sum(task.state != "pr_open" for task in good),
                 duplicated=max(len(pulls) - 2, 0), worker_kills=len(killer.kills), poison_state=poisoned.state)
    assert poisoned.state == "failed", poisoned.details()
    assert poisoned.runs == [(1, "lost"), (2, "lost"), (3, "lost")] and len(killer.kills) == 3
    assert poisoned.failure_reason and poisoned.failure_reason.startswith("worker lost on 3 attempts")
    assert "expired on attempt 3 of 3; giving up" in poisoned.details()
    assert poisoned.details().count("; requeued") == 2
    assert [(task.state, task.attempt) for task in good] == [("pr_open", 1), ("pr_open", 1)]
    assert sorted(pr.number for pr in pulls) == sorted(task.pr_number for task in good)
    assert story(db, poison_id).pr_number is None and sorted(forge.branches()) == sorted(t.branch for t in good)
    # and the issue says so: no worker was left to, the coordinator's reconciler does
    issue = wait_for(lambda: (found := forge.github.issue(REPO, 2)) and "forgecrew:failed" in found.labels and found,
                     timeout=30, what="the poison issue labelled failed")
    assert "forgecrew:working" not in issue.labels
    [notice] = [comment["body"] for comment in issue.comments if "worker was lost on all 3 attempts" in comment["body"]]
    assert "/forgecrew retry" in notice and "pid" not in notice  # what to do, and no host or process names
