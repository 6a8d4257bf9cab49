"""Helpers for the fault tests: a cluster on the fake GitHub, a model scripted per issue, kills, figures."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from common.db import Database
from common.forge.local import LocalForge
from common.models import Task
from common.settings import Settings
from tests.fakes.anthropic_server import FakeAnthropic, Spec, Step
from tests.fakes.github_server import FakeGitHub
from tests.sample_repo import write_sample
from tests.support import Process, children_of, headers, wait_for

REPO = "Codertocat/Hello-World"  # the repository of GitHub's example payloads
TOKEN = "ghp_faultTokenForTheFakeGitHub0123456789"
LEASE_OWNER_PID = re.compile(r"/pid(\d+)@")
FINAL_STATES = ("pr_open", "failed", "done", "cancelled")


# ---- the figure each test leaves behind ---------------------------------------------------------

def record_fault(name: str, *, recovered: float | None, lost: int, duplicated: int, **extra: Any) -> str:
    """Print one `FAULT ...` line (pytest -s) and append it as JSON to $FORGECREW_FAULTS_REPORT.

    docs/reliability.md is written from the latest run's lines, so each test states its figure
    in one place instead of leaving it to be read out of logs.
    """
    recovery = f"recovered in {recovered:.1f} s" if recovered is not None else "nothing to recover"
    line = f"FAULT {name}: {recovery}, lost {lost}, duplicated {duplicated}"
    line += "".join(f", {_figure(key, value)}" for key, value in extra.items())
    print(line)
    path = os.environ.get("FORGECREW_FAULTS_REPORT")
    if path:
        entry = {"fault": name, "recovered_seconds": None if recovered is None else round(recovered, 2),
                 "lost": lost, "duplicated": duplicated, **extra, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                       time.gmtime())}
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")
    return line


def _figure(key: str, value: Any) -> str:
    """`answered_in_seconds=2.4` reads as `answered in 2.4 s`."""
    if key.endswith("_seconds"):
        return f"{key.removesuffix('_seconds').replace('_', ' ')} {value} s"
    return f"{key.replace('_', ' ')} {value}"


# ---- a model that serves several tasks, and attempts, at once -----------------------------------

Turn = Spec | Callable[[dict[str, Any]], Spec]


def per_issue(scripts: dict[str, Sequence[Turn]]) -> Step:
    """One scripted model for concurrent tasks and repeated attempts.

    The issue's title in the first message picks the script and the number of assistant turns so
    far picks the step, so a second attempt replays its script from the start, whatever else the
    model is serving meanwhile.
    """

    def step(body: dict[str, Any]) -> Spec:
        first = json.dumps(body["messages"][0])
        for title, script in scripts.items():
            if title in first:
                turn = sum(1 for message in body["messages"] if message["role"] == "assistant")
                chosen = script[min(turn, len(script) - 1)]
                return chosen(body) if callable(chosen) else chosen
        raise AssertionError(f"no script for this task: {first[:300]}")

    return step


def serve_per_issue(model: FakeAnthropic, scripts: dict[str, Sequence[Turn]], *, requests: int = 300) -> None:
    """Give the fake model enough copies of the router for every request the test can make."""
    model.add(*[per_issue(scripts)] * requests)


# ---- the forge: the fake GitHub API over bare repositories on disk ------------------------------

@dataclass
class Forge:
    github: FakeGitHub
    git_root: Path

    def add_issue(self, number: int, title: str, body: str) -> None:
        self.github.add_issue(REPO, number, title, body, labels=("forgecrew:backend",))

    def git(self, *args: str) -> str:
        """A read-only git command in the remote's bare repository."""
        return subprocess.run(["git", *args], cwd=self.git_root / f"{REPO}.git", capture_output=True, text=True,
                              check=True).stdout

    def branches(self) -> dict[str, str]:
        """forgecrew branches on the git remote, name to head commit."""
        heads = dict(line.split() for line in self.git("for-each-ref", "--format=%(refname:strip=2) %(objectname)",
                                                       "refs/heads/").splitlines())
        return {name: sha for name, sha in heads.items() if name.startswith("forgecrew/")}

    def file_at(self, ref: str, path: str) -> str:
        return self.git("show", f"{ref}:{path}")

    def authors_since_main(self, ref: str) -> list[str]:
        """Who wrote each commit `ref` has and main has not."""
        return self.git("log", "--format=%an", f"main..{ref}").split()

    def pulls(self) -> list[Any]:
        return self.github.pulls(REPO)

    def pr_creations(self) -> int:
        """POST /pulls requests that GitHub acted on (a failed one created nothing)."""
        return sum(1 for call in self.github.calls("POST", r"/pulls$") if call.status == 201)


def make_forge(github: FakeGitHub, tmp_path: Path) -> Forge:
    """A repository with the sample's failing test, served as Codertocat/Hello-World."""
    git_root = tmp_path / "git"
    settings = Settings(database_url="sqlite://", local_forge_root=git_root)
    LocalForge(settings).create_repo(REPO, write_sample(tmp_path / "sample"))
    github.add_token(TOKEN)
    github.add_repo(REPO)
    return Forge(github, git_root)


def forge_settings(forge: Forge, model: FakeAnthropic) -> dict[str, Any]:
    """The settings overrides that point a cluster at this forge and model."""
    from tests.fakes.anthropic_server import DEFAULT_KEY

    return {"forge": "github", "github_token": TOKEN, "github_api_url": forge.github.api_url,
            "clone_url_template": f"file://{forge.git_root}/{{full_name}}.git", "github_write_interval_seconds": 0,
            "anthropic_api_key": DEFAULT_KEY, "anthropic_base_url": model.base_url}


# ---- processes ----------------------------------------------------------------------------------

def start_workers(env: dict[str, str], tmp: Path, specialty: str, count: int, processes: list[Process],
                  *extra: str) -> list[Process]:
    """`count` workers of one task at a time each, started together: they boot in parallel."""
    return await_ready(spawn_workers(env, tmp, specialty, count, processes, *extra))


def spawn_workers(env: dict[str, str], tmp: Path, specialty: str, count: int, processes: list[Process],
                  *extra: str) -> list[Process]:
    """Start the workers without waiting: they boot while the test starts the rest (await_ready)."""
    started = []
    for _ in range(count):
        name = f"{specialty.split(',')[0]}-{uuid.uuid4().hex[:6]}"
        started.append(Process(["worker", "--specialty", specialty, "--hostname", f"{name}@test",
                                "--concurrency", "1", *extra], env, tmp / f"worker-{name}.log"))
    processes.extend(started)  # stopped at the end, even the ones that never came up
    return started


def await_ready(workers: list[Process]) -> list[Process]:
    for proc in workers:
        wait_for(lambda: " ready." in proc.log() or not proc.alive(), timeout=90, what=f"worker {proc.log_path}")
        assert proc.alive(), proc.log()[-3000:]
    return workers


def stop_together(processes: list[Process], timeout: float = 20) -> None:
    """SIGTERM every process at once, then wait for each: a fault test starts several, and one by one
    their warm shutdowns add up."""
    for proc in processes:
        if proc.alive() and proc.prefixed:
            os.killpg(proc.popen.pid, signal.SIGTERM)
        elif proc.alive():
            proc.popen.terminate()
    deadline = time.monotonic() + timeout
    for proc in processes:
        try:
            proc.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            pass  # Process.stop SIGKILLs it
    for proc in reversed(processes):
        proc.stop()


def holder(db: Database, task_id: int, workers: Sequence[Process]) -> Process:
    """The worker process whose lease holds the task (its pid is in the lease owner's name)."""
    with db.session() as session:
        owner = session.get(Task, task_id).lease_owner or ""
    found = LEASE_OWNER_PID.search(owner)
    assert found, f"task {task_id} has no lease holder ({owner!r})"
    pid = int(found.group(1))  # the worker itself (threads, solo) or one of its pool children (prefork)
    [proc] = [proc for proc in workers if pid == proc.popen.pid or pid in children_of(proc.popen.pid)]
    return proc


def kill(proc: Process, sig: int = signal.SIGKILL) -> None:
    """SIGKILL goes to the whole group (sandboxed children too); SIGTERM to the worker alone, as
    systemd's KillMode=mixed and docker stop send it."""
    if sig == signal.SIGKILL:
        os.killpg(proc.popen.pid, sig)
    else:
        os.kill(proc.popen.pid, sig)


def task_of_issue(db: Database, number: int) -> int:
    """The id of the issue's task (the newest one)."""
    with db.session() as session:
        tasks = session.query(Task).filter(Task.repo == REPO, Task.issue_number == number).order_by(Task.id).all()
    assert tasks, f"no task for issue {number}"
    return tasks[-1].id


# ---- what the database says ---------------------------------------------------------------------

@dataclass
class Story:
    """A task's ending as its rows tell it: state, attempts, runs and events."""

    state: str
    attempt: int
    failure_reason: str | None
    branch: str | None
    pr_number: int | None
    dispatch_count: int
    runs: list[tuple[int, str | None]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (to_state, actor, detail)

    def details(self) -> str:
        return "\n".join(detail for _, _, detail in self.events)


def story(db: Database, task_id: int) -> Story:
    with db.session() as session:
        task = session.get(Task, task_id)
        return Story(task.state, task.attempt, task.failure_reason, task.branch, task.pr_number,
                     task.dispatch_count,
                     [(run.attempt, run.outcome) for run in sorted(task.runs, key=lambda run: run.id)],
                     [(event.to_state, event.actor, event.detail) for event in task.events])


def wait_final(db: Database, task_id: int, *, timeout: float = 150) -> Story:
    """Poll until the task ends (pr_open or failed) and each of its runs says how it ended.

    A worker records its run's outcome just after the task's new state, in its own transaction.
    A loaded 2-core host gets a generous timeout.
    """
    def ended() -> Story | None:
        found = story(db, task_id)
        closed = all(outcome is not None for _, outcome in found.runs)
        return found if found.state in FINAL_STATES and closed else None

    return wait_for(ended, timeout=timeout, interval=0.2, what=f"task {task_id} to end")


def queued_messages(settings: Settings) -> list[str]:
    """Ids of the messages waiting on every specialty queue of the broker (Redis), of every priority.

    kombu keeps one list per priority step: the queue's name for step 0, `<queue>:<step>` for the rest.
    """
    import redis

    from common.celery_app import REDIS_PRIORITY_STEPS, REDIS_SEP
    from common.specialties import queue_names

    client = redis.Redis.from_url(settings.broker_url)
    keys = [queue if step == 0 else f"{queue}{REDIS_SEP}{step}"
            for queue in queue_names(settings) for step in REDIS_PRIORITY_STEPS]
    return [json.loads(raw)["headers"]["id"] for key in keys for raw in client.lrange(key, 0, -1)]


def deliver(url: str, data: dict[str, Any], *, event: str = "issues", delivery: str | None = None) -> httpx.Response:
    body = json.dumps(data).encode()
    return httpx.post(f"{url}/webhooks/github", content=body, headers=headers(event, body, delivery=delivery),
                      timeout=60)
