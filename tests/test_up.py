"""`forgecrew up` on its zero-setup default: SQLite and the embedded broker in FORGECREW_HOME, nothing else.

No FORGECREW_DATABASE_URL or FORGECREW_BROKER_URL reaches these processes, so the shared Redis
on 6379 and PostgreSQL are not used: everything lives in the test's own HOME.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from common.db import Database
from common.forge.local import LocalForge
from common.models import Task
from common.settings import Settings
from tests.fakes.anthropic_server import DEFAULT_KEY, FakeAnthropic, tool_use
from tests.sample_repo import ISSUE_BODY, ISSUE_TITLE, fixing_script, write_sample
from tests.support import Process, children_of, free_port, headers, labeled_issue, wait_for

pytestmark = pytest.mark.integration
REPO = "Codertocat/Hello-World"


@dataclasses.dataclass
class Cluster:
    up: Process
    home: Path
    url: str
    flower_url: str
    settings: Settings  # as the cluster's own commands see it (read back from HOME)

    def secret(self, name: str) -> str:
        return (self.home / "secrets" / name).read_text().strip()

    def deliver(self, data: dict) -> httpx.Response:
        body = json.dumps(data).encode()
        return httpx.post(f"{self.url}/webhooks/github", content=body,
                          headers=headers("issues", body, secret=self.secret("webhook_secret")), timeout=30)

    def task(self, task_id: int) -> Task:
        db = Database(self.settings)
        try:
            with db.session() as session:
                return session.get(Task, task_id, options=[])
        finally:
            db.dispose()


def zero_setup_env(home: Path, model: FakeAnthropic, **extra: str) -> dict[str, str]:
    """Only an Anthropic key (and where its stand-in listens): no database, broker, forge or secret."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FORGECREW_")}
    env.update(FORGECREW_HOME=str(home), FORGECREW_ANTHROPIC_API_KEY=DEFAULT_KEY,
               FORGECREW_ANTHROPIC_BASE_URL=model.base_url, **extra)
    return env


@pytest.fixture
def model() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


def start_up(tmp_path: Path, home: Path, env: dict[str, str]) -> Cluster:
    settings = Settings(home=home)
    forge = LocalForge(settings)
    forge.create_repo(REPO, write_sample(tmp_path / "sample"))
    forge.create_issue(REPO, 1, ISSUE_TITLE, ISSUE_BODY)
    port, flower_port = free_port(), free_port()
    up = Process(["up", "--single-worker", "--port", str(port), "--flower-port", str(flower_port), "--grace", "5"],
                 env, tmp_path / "up.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: up.alive() and httpx.get(f"{url}/readyz", timeout=1).status_code == 200, timeout=90,
                 what="up's coordinator ready")
        wait_for(lambda: " ready." in up.log(), timeout=90, what="up's worker ready")
    except BaseException:
        up.stop()
        print(up.log()[-4000:], file=sys.stderr)
        raise
    return Cluster(up, home, url, f"http://127.0.0.1:{flower_port}", Settings(home=home))


def test_up_with_nothing_set_up_turns_a_webhook_into_a_pr(tmp_path: Path, model: FakeAnthropic) -> None:
    home = tmp_path / "home"
    model.add(*fixing_script())
    cluster = start_up(tmp_path, home, zero_setup_env(home, model))
    try:
        log = cluster.up.log()
        assert "embedded valkey-server" in log and cluster.secret("webhook_secret") in log
        socket_mode = stat.S_IMODE((home / "broker" / "broker.sock").stat().st_mode)
        assert socket_mode == 0o700 and stat.S_IMODE((home / "broker").stat().st_mode) == 0o700
        for name in ("webhook_secret", "api_token", "flower_password"):
            assert stat.S_IMODE((home / "secrets" / name).stat().st_mode) == 0o600
        assert cluster.settings.database_url == f"sqlite:///{home / 'forgecrew.db'}"

        response = cluster.deliver(labeled_issue("forgecrew:backend", title=ISSUE_TITLE, body=ISSUE_BODY))
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        task = wait_for(lambda: (t := cluster.task(task_id)).state in ("pr_open", "failed") and t, timeout=120,
                        interval=0.5, what="the task to finish")
        assert task.state == "pr_open", (task.failure_reason, cluster.up.log()[-4000:])
        [pr] = LocalForge(cluster.settings).pull_requests(REPO)
        assert task.pr_url == pr["url"]

        auth = ("forgecrew", cluster.secret("flower_password"))
        assert httpx.get(f"{cluster.flower_url}/api/tasks", timeout=10).status_code == 401

        def flower_task() -> dict | None:
            tasks = httpx.get(f"{cluster.flower_url}/api/tasks", auth=auth, timeout=10).json()
            done = [t for t in tasks.values() if t.get("state") == "SUCCESS"]
            return done[0] if done else None

        seen = wait_for(flower_task, timeout=30, what="Flower to show the finished task")
        assert seen["name"] == f"{REPO}#1 backend"
        assert seen["result"].strip("'\"").startswith(f"pr_open {pr['url']}")
    finally:
        assert cluster.up.stop(timeout=60) == 0, cluster.up.log()[-3000:]
    assert not (home / "broker" / "broker.sock").exists(), "the broker stopped with up"
    assert any((home / "broker" / "appendonlydir").iterdir()), "the broker kept an append-only file"


def test_a_worker_killed_mid_task_under_up_is_replaced_and_the_task_finishes_once(tmp_path: Path,
                                                                                   model: FakeAnthropic) -> None:
    """SIGKILL to the worker's whole process group, as a crashed host would: up restarts it, the reaper
    requeues the task once the dead worker's lease ends, and the new worker opens the one PR."""
    home = tmp_path / "home"
    hang = dataclasses.replace(tool_use("read_file", {"path": "calc.py"}), delay=300)
    model.add(hang, *fixing_script())
    env = zero_setup_env(home, model, FORGECREW_LEASE_SECONDS="4", FORGECREW_REAPER_INTERVAL_SECONDS="1")
    cluster = start_up(tmp_path, home, env)
    try:
        response = cluster.deliver(labeled_issue("forgecrew:backend", title=ISSUE_TITLE, body=ISSUE_BODY))
        task_id = response.json()["task_id"]
        wait_for(lambda: len(model.message_requests) == 1, timeout=60, what="the agent's first model call")
        [worker] = [pid for pid in children_of(cluster.up.popen.pid)
                    if b" worker " in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")]
        os.killpg(worker, signal.SIGKILL)
        task = wait_for(lambda: (t := cluster.task(task_id)).state in ("pr_open", "failed") and t, timeout=120,
                        interval=0.5, what="the task to finish on the replacement worker")
        assert task.state == "pr_open", (task.failure_reason, cluster.up.log()[-4000:])
        assert task.attempt == 2
        assert len(LocalForge(cluster.settings).pull_requests(REPO)) == 1
        assert "restarting it" in cluster.up.log()
        db = Database(cluster.settings)

        def recorded() -> tuple[list, set] | None:  # the run's row is finished just after the state moves
            with db.session() as session:
                runs = session.get(Task, task_id).runs
                if any(run.outcome is None for run in runs):
                    return None
                return [(run.attempt, run.outcome) for run in runs], {run.worker for run in runs}

        outcomes, owners = wait_for(recorded, timeout=30, what="both runs' outcomes")
        db.dispose()
        assert outcomes == [(1, "lost"), (2, "pr_open")]
        assert len(owners) == 2, owners  # the new worker process, not the dead one
    finally:
        assert cluster.up.stop(timeout=60) == 0, cluster.up.log()[-3000:]


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordinator.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_commands_without_up_say_to_start_it(tmp_path: Path) -> None:
    """A worker on the defaults, before any `up` made HOME: one line that names what to do."""
    home = tmp_path / "never-up"
    env = {key: value for key, value in os.environ.items() if not key.startswith("FORGECREW_")}
    env.update(FORGECREW_HOME=str(home), FORGECREW_FORGE="local", FORGECREW_ANTHROPIC_API_KEY=DEFAULT_KEY,
               FORGECREW_BROKER_START_TIMEOUT_SECONDS="0.5")
    done = run_cli("worker", "--specialty", "backend", env=env)
    assert done.returncode != 0 and "start `forgecrew up`" in done.stderr and not home.exists()
    assert run_cli("db", "current", env=env).stdout.startswith("empty") and not home.exists()
    assert run_cli("db", "upgrade", env=env).returncode == 0
    assert stat.S_IMODE(home.stat().st_mode) == 0o700 and (home / "forgecrew.db").is_file()
    done = run_cli("worker", "--specialty", "backend", env=env)  # the database exists now; the broker does not
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0 and len(lines) == 1 and "no broker answers on" in lines[0], done.stderr
    assert "start `forgecrew up`" in lines[0]


def test_a_second_up_on_the_same_home_is_refused(tmp_path: Path, model: FakeAnthropic) -> None:
    home = tmp_path / "home"
    cluster = start_up(tmp_path, home, zero_setup_env(home, model))
    try:
        done = run_cli("up", "--port", str(free_port()), env=zero_setup_env(home, model))
        assert done.returncode != 0 and "another `forgecrew up`" in done.stderr, done.stderr
        assert cluster.up.alive() and httpx.get(f"{cluster.url}/readyz", timeout=5).status_code == 200
    finally:
        assert cluster.up.stop(timeout=60) == 0


def test_children_stop_when_up_itself_is_killed(tmp_path: Path, model: FakeAnthropic) -> None:
    """SIGKILL gives `up` no chance to stop anything: its children must notice on their own."""
    home = tmp_path / "home"
    cluster = start_up(tmp_path, home, zero_setup_env(home, model))
    children = children_of(cluster.up.popen.pid)
    assert len(children) >= 4, children  # broker, coordinator, reconciler, worker, Flower
    cluster.up.popen.kill()
    cluster.up.popen.wait()
    alive = lambda: [pid for pid in children if Path(f"/proc/{pid}").exists()  # noqa: E731
                     and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()]
    try:
        wait_for(lambda: not alive(), timeout=60, what="up's children to stop after up was killed")
    finally:
        for pid in alive():
            os.killpg(pid, signal.SIGKILL)
        cluster.up.stop()


def test_flower_alone_refuses_to_start_without_a_password(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FORGECREW_")}
    env.update(FORGECREW_HOME=str(tmp_path / "home"), FORGECREW_BROKER_URL="redis://127.0.0.1:1/0")
    done = run_cli("flower", "--port", str(free_port()), env=env)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0 and len(lines) == 1 and "FORGECREW_FLOWER_PASSWORD must be set" in lines[0]
    assert "--no-auth" in lines[0]
