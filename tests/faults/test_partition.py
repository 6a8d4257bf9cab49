"""Fault 10: a worker host cut off the network mid-task; the other host finishes; the first is fenced.

The coordinator, PostgreSQL, Redis and the fake model and GitHub stay in the root namespace; two
worker hosts are network namespaces with veth links (tests/faults/netns.py). The model cuts the
link of the host whose worker asks it for the task's first turn, so that worker is mid-agent with
its reply, its heartbeats and its broker connection all stalled. Its lease runs out, the reaper
requeues the task and the other host runs it to a PR. Then the link comes back: the stalled run
carries on, finds its lease token stale, and pushes nothing.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from common.db import Database
from common.settings import Settings
from tests.conftest import settings_env
from tests.fakes.anthropic_server import FakeAnthropic
from tests.faults.netns import IP, Host, Network
from tests.faults.support import REPO, Forge, deliver, holder, record_fault, serve_per_issue, story, wait_final
from tests.sample_repo import ISSUE_BODY, ISSUE_TITLE, fixing_script
from tests.support import Process, labeled_issue, start_coordinator, wait_for

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0 or not IP,
                                 reason="network namespaces need root and iproute2 (apt-get install iproute2)")]
STALE_RUN_ENDED = "leaving it to the new holder"


def service_ports(settings: Settings) -> list[int]:
    """Every port a worker reaches: database, broker, model, GitHub API."""
    urls = (settings.database_url, settings.broker_url, settings.anthropic_base_url, settings.github_api_url)
    return sorted({urlparse(url.replace("postgresql+psycopg", "postgresql")).port for url in urls if url})


def start_host_workers(env: dict[str, str], tmp: Path, hosts: list[Host], processes: list[Process]) -> list[Process]:
    """One backend worker on each host, started together, each inside its namespace with a disk of its own.

    Hosts share no workspace directory: the workspace lock a stalled run holds on one host is no
    business of the other's.
    """
    workers = []
    for host in hosts:
        name = f"{host.name}-{uuid.uuid4().hex[:4]}"
        disk = tmp / host.name
        own = {**env, "FORGECREW_WORKSPACE_ROOT": str(disk / "workspaces"), "FORGECREW_HOME": str(disk / "home")}
        workers.append(Process(["worker", "--specialty", "backend", "--hostname", f"{name}@test", "--concurrency",
                                "1"], own, tmp / f"worker-{name}.log", prefix=host.prefix))
    processes.extend(workers)
    for proc in workers:
        wait_for(lambda: " ready." in proc.log() or not proc.alive(), timeout=90, what=f"worker {proc.log_path}")
        assert proc.alive(), proc.log()[-3000:]
    return workers


def commits_on(forge: Forge, branch: str) -> list[str]:
    out = subprocess.run(["git", "rev-list", f"main..{branch}"], cwd=forge.git_root / f"{REPO}.git",
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def test_partitioned_worker_host_is_fenced_and_the_other_host_opens_the_only_pr(
        fault_settings: Callable[..., Settings], db: Database, model: FakeAnthropic, forge: Forge, tmp_path: Path,
        processes: list[Process]) -> None:
    settings = fault_settings()
    cut: dict[str, Any] = {}
    workers: list[Process] = []

    with Network(service_ports(settings)) as network:
        def first_turn(body: dict[str, Any]) -> Any:
            if not cut:
                proc = holder(db, task_id, workers)
                [host] = [h for h, w in zip(network.hosts, workers) if w is proc]
                host.cut()  # the reply below waits in the relay's buffers until the link is back
                cut.update(host=host, worker=proc, at=time.monotonic())
            return fixing_script()[0]

        try:
            serve_per_issue(model, {ISSUE_TITLE: [first_turn, *fixing_script()[1:]]})
            forge.add_issue(1, ISSUE_TITLE, ISSUE_BODY)
            env = settings_env(settings)
            coordinator, url = start_coordinator(env, tmp_path)
            processes.append(coordinator)
            workers.extend(start_host_workers(env, tmp_path, network.hosts, processes))
            issue = labeled_issue("forgecrew:backend", number=1, title=ISSUE_TITLE, body=ISSUE_BODY)
            response = deliver(url, issue)
            assert response.status_code == 202, response.text
            task_id = response.json()["task_id"]

            end = wait_final(db, task_id, timeout=90)
            recovered = time.monotonic() - cut["at"]
            finished = {"branches": forge.branches(), "commits": commits_on(forge, end.branch)}
            stale: Process = cut["worker"]
            [other] = [w for w in workers if w is not stale]
            cut["host"].restore()
            wait_for(lambda: STALE_RUN_ENDED in stale.log(), timeout=60, interval=0.5,
                     what="the partitioned worker to give its stale run up")
            time.sleep(1.0)  # anything it were still to push would land now
            after = {"branches": forge.branches(), "commits": commits_on(forge, end.branch)}
            pulls = forge.pulls()
            final = story(db, task_id)
        finally:  # the workers go before their network, so their logs end with the test, not its teardown
            for proc in workers:
                proc.stop()

    record_fault("10 network partition of a worker host mid-task", recovered=recovered,
                 lost=int(end.state != "pr_open"),
                 duplicated=max(len(pulls) - 1, 0) + max(len(after["branches"]) - 1, 0),
                 attempts=end.attempt)
    assert end.state == "pr_open", (end.failure_reason, end.details())
    assert end.attempt == 2 and end.runs[-1] == (2, "pr_open") and end.runs[0][0] == 1, end.runs
    assert "expired on attempt 1; requeued" in end.details()
    assert f"lease of {stale_name(stale)}" in end.details()
    assert any(actor.startswith(stale_name(other)) for to, actor, _ in end.events if to == "pr_open"), end.events
    assert after == finished and list(after["branches"]) == [end.branch]  # the stale run pushed nothing
    assert len(after["commits"]) == 1 and "return a + b" in forge.file_at(end.branch, "calc.py")
    [pr] = pulls
    assert pr.number == end.pr_number and pr.head == end.branch and forge.pr_creations() == 1
    assert (final.state, final.pr_number) == ("pr_open", end.pr_number)  # the stale run wrote nothing either
    assert forge.github.violations == []


def stale_name(proc: Process) -> str:
    """The worker's name as its lease owner starts (`--hostname` minus the @host part)."""
    args = proc.popen.args
    return str(args[args.index("--hostname") + 1]).split("@")[0]
