"""Soak: a steady stream of signed deliveries for an hour, a worker restarted every few minutes, resources sampled.

A real coordinator and one real worker per specialty run on a scratch PostgreSQL database, a
Redis db of their own, the local forge and a scripted FakeAnthropic (write a file, finish), so
tasks really run and open PRs. Deliveries come at `--rate` a second, mixed as in bench/burst.py
(`--task-share` of them start a task, some are resent). Every `--sample-every` seconds it records
each process tree's RSS and open fds, the database's connections (pg_stat_activity) and the
Redis db's clients; at the end it prints first/after-warm-up/last/max of each and calls a metric
flat when its last value is at most 1.2 x its value after warm-up (both from samples taken with
no worker restarting). Then it drains and counts tasks
lost (not pr_open) and duplicated (two tasks or two PRs for one issue).

    python bench/soak.py --minutes 60 --rate 5 --restart-every 300 [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "bench"))

import burst  # noqa: E402
from bench_cluster import Scratch  # noqa: E402

PG_ADMIN = os.environ.get("FORGECREW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("FORGECREW_TEST_REDIS", "redis://127.0.0.1:6379")
PG_PORT, REDIS_PORT = urlparse(PG_ADMIN).port or 5432, urlparse(REDIS_URL).port or 6379
FLAT_FACTOR = 1.2
SETTLE_SECONDS = 30.0
RESEND_EVERY = 10  # every tenth delivery is a resend of the one before (GitHub's redelivery)


def session_step(body: dict[str, Any]) -> Any:
    """Any number of concurrent sessions: write a note, then finish (the turn is read off the history)."""
    from tests.fakes.anthropic_server import tool_use

    turn = sum(1 for message in body["messages"] if message["role"] == "assistant")
    if turn == 0:
        return tool_use("write_file", {"path": f"notes/{uuid.uuid4().hex}.md", "content": "a soak session\n"})
    return tool_use("finish", {"summary": "Soak session done."})


# ---- what is sampled ----------------------------------------------------------------------------

def tree(pid: int) -> list[int]:
    """A process and all its descendants, read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return round(total / 1024, 1)


def open_fds(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return total


def tcp_peers() -> dict[int, int]:
    """Socket inode -> remote port of every established TCP connection of this network namespace."""
    peers = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01":  # ESTABLISHED
                peers[int(fields[9])] = int(fields[2].rsplit(":", 1)[1], 16)
    return peers


def connections_to(pids: list[int], port: int, peers: dict[int, int]) -> int:
    """How many of these processes' sockets are connected to `port`: which process holds the database's connections."""
    count = 0
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        count += sum(1 for link in links if link.startswith("socket:[") and peers.get(int(link[8:-1])) == port)
    return count


def pg_connections(admin: Any, db_name: str) -> int:
    return int(admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (db_name,)).fetchone()[0])


def redis_clients(client: Any, number: int) -> int:
    """Clients whose selected db is ours (the sampler's own connection sits in db 0)."""
    return sum(1 for entry in client.client_list() if int(entry.get("db", -1)) == number)


# ---- the cluster --------------------------------------------------------------------------------

class Cluster:
    """Database, Redis db, model, forge, coordinator and one worker per specialty."""

    def __init__(self, root: Path) -> None:
        from common.forge.local import LocalForge

        self.root = root
        self.scratch = Scratch(root, pg_admin=PG_ADMIN, redis_url=REDIS_URL, prefix="forgecrew_soak",
                               webhook_secret=burst.intake_bench.SECRET, repo_allowlist=burst.ALLOWLIST.split(","),
                               max_turns=4, repair_rounds=0, worker_concurrency=4)
        self.settings, self.db, self.model = self.scratch.settings, self.scratch.db, self.scratch.model
        self.db_name = self.scratch.db_name
        source = root / "source"
        source.mkdir()
        (source / "README.md").write_text("# soak\n\nA small repository for the soak run.\n")
        (source / "app.py").write_text("def answer():\n    return 42\n")
        for repo in burst.REPOS:
            LocalForge(self.settings).create_repo(repo, source)
        self.processes: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.unsettled_until = 0.0  # time.monotonic() until which a restart's figures are in flux

    def env(self) -> dict[str, str]:
        env = self.scratch.env()
        env["PYTHONPATH"] = str(ROOT)
        return env

    def start(self) -> str:
        from tests.support import start_coordinator

        coordinator, url = start_coordinator(self.env(), self.root)
        self.processes["coordinator"] = coordinator
        for specialty in burst.SPECIALTIES:
            self.start_worker(specialty)
        return url

    def start_worker(self, specialty: str) -> None:
        from tests.support import start_worker

        proc = start_worker(self.env(), self.root, specialty)
        with self.lock:
            self.processes[f"worker:{specialty}"] = proc

    def restart(self, specialty: str) -> float:
        """SIGTERM (a deploy: the running tasks finish), then a fresh worker; seconds it took."""
        started = time.monotonic()
        with self.lock:
            old = self.processes[f"worker:{specialty}"]
            self.unsettled_until = float("inf")
        old.stop(timeout=60)
        self.start_worker(specialty)
        with self.lock:
            self.unsettled_until = time.monotonic() + SETTLE_SECONDS
        return time.monotonic() - started

    def settled(self) -> bool:
        """False while a worker restarts and for SETTLE_SECONDS after: its connections are still being made."""
        with self.lock:
            return time.monotonic() >= self.unsettled_until

    def pids(self) -> dict[str, list[int]]:
        with self.lock:
            # a worker being restarted is skipped, not counted as zero
            return {role: tree(proc.popen.pid) for role, proc in self.processes.items() if proc.alive()}

    def stop(self) -> None:
        with self.lock:
            procs = list(self.processes.values())
        for proc in reversed(procs):
            proc.stop()
        self.scratch.close()


# ---- the run ------------------------------------------------------------------------------------

class Sampler:
    """One row of figures every interval; the admin and Redis connections are opened once."""

    def __init__(self, cluster: Cluster) -> None:
        import psycopg
        import redis

        self.cluster = cluster
        self.admin = psycopg.connect(PG_ADMIN, autocommit=True)
        self.redis = redis.Redis.from_url(f"{REDIS_URL}/0")
        self.rows: list[dict[str, Any]] = []

    def sample(self, elapsed: float, sent: int) -> dict[str, Any]:
        row: dict[str, Any] = {"t": round(elapsed), "sent": sent, "settled": self.cluster.settled()}
        workers_rss, workers_fds = 0.0, 0
        peers = tcp_peers()
        for role, pids in self.cluster.pids().items():
            row[f"{role}.rss_mb"], row[f"{role}.fds"] = rss_mb(pids), open_fds(pids)
            row[f"{role}.pg"] = connections_to(pids, PG_PORT, peers)
            row[f"{role}.redis"] = connections_to(pids, REDIS_PORT, peers)
            if role.startswith("worker:"):
                workers_rss += row[f"{role}.rss_mb"]
                workers_fds += row[f"{role}.fds"]
        row["workers.rss_mb"], row["workers.fds"] = round(workers_rss, 1), workers_fds
        row["pg_connections"] = pg_connections(self.admin, self.cluster.db_name)
        row["redis_clients"] = redis_clients(self.redis, self.cluster.scratch.slot.number)
        row.update(task_states(self.cluster))
        self.rows.append(row)
        return row

    def close(self) -> None:
        self.admin.close()
        self.redis.close()


def task_states(cluster: Cluster) -> dict[str, int]:
    from sqlalchemy import func, select

    from common.models import Task

    with cluster.db.session() as session:
        counts = dict(session.execute(select(Task.state, func.count()).group_by(Task.state)).all())
    return {"tasks.pr_open": counts.get("pr_open", 0), "tasks.failed": counts.get("failed", 0),
            "tasks.waiting": sum(n for state, n in counts.items() if state not in ("pr_open", "failed"))}


def summary(rows: list[dict[str, Any]], warmup: float) -> dict[str, dict[str, Any]]:
    """first / after warm-up / last / max of each resource metric, and whether it stayed flat.

    The warm-up and last figures come from settled samples only: one taken while a worker restarts
    sees a process half started (fewer fds and connections), which would make any later figure
    look like growth. The maximum counts every sample.
    """
    settled = [row for row in rows if row.get("settled", True)] or rows
    warm = next((row for row in settled if row["t"] >= warmup), settled[-1])
    metrics = [key for key in rows[0] if key.endswith((".rss_mb", ".fds", ".pg", ".redis"))
               or key in ("pg_connections", "redis_clients")]
    out = {}
    for key in metrics:
        values = [row[key] for row in rows if key in row]
        last = next(row[key] for row in reversed(settled) if key in row)
        flat = last <= FLAT_FACTOR * warm.get(key, values[0])
        out[key] = {"first": values[0], "warm": warm.get(key), "last": last, "max": max(values),
                    "verdict": "flat" if flat else "GROWING"}
    return out


def drive(cluster: Cluster, url: str, *, minutes: float, rate: float, restart_every: float, sample_every: float,
          task_share: float) -> tuple[Sampler, list[burst.Item], list[int], list[float]]:
    """Send at a steady rate, restart workers round-robin in the background, sample; return what was sent."""
    import httpx

    share = task_share / (1 - task_share) * (sum(w for *_, w in burst.Mix.QUIET) + burst.Mix.OTHER_LABEL_WEIGHT
                                             + burst.Mix.FOREIGN_REPO_WEIGHT)
    mix = burst.Mix(random.Random(60), task_weight=share)
    sampler, sent, statuses, restarts = Sampler(cluster), [], [], []
    started = time.monotonic()
    next_sample, next_restart, turn = started, started + restart_every, 0
    restarter: threading.Thread | None = None
    with httpx.Client(base_url=url, timeout=60) as client:
        for index in range(int(minutes * 60 * rate)):
            due = started + index / rate
            time.sleep(max(0.0, due - time.monotonic()))
            item = sent[-1] if index % RESEND_EVERY == RESEND_EVERY - 1 else mix.next()
            headers = {"X-GitHub-Event": item.event, "X-GitHub-Delivery": item.delivery,
                       "X-Hub-Signature-256": item.signature, "Content-Type": "application/json"}
            try:
                statuses.append(client.post("/webhooks/github", content=item.body, headers=headers).status_code)
            except httpx.TransportError:  # counted as status 0, as the burst counts it; the run goes on
                statuses.append(0)
            sent.append(item)
            now = time.monotonic()
            if now >= next_restart and (restarter is None or not restarter.is_alive()):
                specialty = burst.SPECIALTIES[turn % len(burst.SPECIALTIES)]
                restarter = threading.Thread(target=lambda s=specialty: restarts.append(cluster.restart(s)),
                                             daemon=True)
                restarter.start()
                next_restart, turn = now + restart_every, turn + 1
            if now >= next_sample:
                _top_up(cluster)
                row = sampler.sample(now - started, len(sent))
                print(json.dumps(row), flush=True)
                next_sample = now + sample_every
    if restarter is not None:
        restarter.join(120)
    sampler.sample(time.monotonic() - started, len(sent))
    return sampler, sent, statuses, restarts


def _top_up(cluster: Cluster) -> None:
    """Keep a few thousand replies scripted, and forget served requests so this process stays small."""
    with cluster.model._lock:
        missing = 2000 - len(cluster.model.script)
        cluster.model.requests.clear()
    if missing > 0:
        cluster.model.add(*[session_step] * missing)


def outcome(cluster: Cluster, sent: list[burst.Item], drain_seconds: float) -> dict[str, int]:
    """Wait for the tasks to end, then count lost and duplicated ones."""
    from sqlalchemy import select

    from common.models import Task

    expected = {(item.task[0], item.task[1]) for item in sent if item.task}
    deadline = time.monotonic() + drain_seconds
    while time.monotonic() < deadline and task_states(cluster)["tasks.waiting"]:
        time.sleep(2)
    with cluster.db.session() as session:
        tasks = session.execute(select(Task.repo, Task.issue_number, Task.state, Task.pr_url)).all()
    per_issue = Counter((repo, number) for repo, number, _, _ in tasks)
    prs = Counter(pr for *_, pr in tasks if pr)
    return {"tasks_expected": len(expected), "tasks": len(tasks),
            "pr_open": sum(1 for *_, state, _ in tasks if state == "pr_open"),
            "lost": sum(1 for key in expected if per_issue[key] == 0)
            + sum(1 for *_, state, _ in tasks if state != "pr_open"),
            "duplicated": sum(n - 1 for n in per_issue.values()) + sum(n - 1 for n in prs.values())}


def run_soak(*, minutes: float, rate: float, restart_every: float, sample_every: float = 30.0,
             task_share: float = 0.1, warmup: float | None = None) -> dict[str, Any]:
    warmup = min(120.0, minutes * 60 / 5) if warmup is None else warmup
    with tempfile.TemporaryDirectory(prefix="forgecrew-soak-") as tmp:
        cluster = Cluster(Path(tmp))
        try:
            _top_up(cluster)
            url = cluster.start()
            sampler, sent, statuses, restarts = drive(cluster, url, minutes=minutes, rate=rate,
                                                      restart_every=restart_every, sample_every=sample_every,
                                                      task_share=task_share)
            counts = outcome(cluster, sent, drain_seconds=180)
            sampler.close()
        finally:
            cluster.stop()
    return {"minutes": minutes, "rate": rate, "restart_every": restart_every, "task_share": task_share,
            "warmup_s": warmup, "deliveries": len(sent), "statuses": dict(Counter(map(str, statuses))),
            "restarts": len(restarts), "restart_seconds": [round(r, 1) for r in restarts], "counts": counts,
            "summary": summary(sampler.rows, warmup), "samples": sampler.rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--rate", type=float, default=5, help="deliveries a second")
    parser.add_argument("--restart-every", type=float, default=300, help="seconds between worker restarts")
    parser.add_argument("--sample-every", type=float, default=30)
    parser.add_argument("--task-share", type=float, default=0.1, help="share of deliveries that start a task")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run_soak(minutes=args.minutes, rate=args.rate, restart_every=args.restart_every,
                      sample_every=args.sample_every, task_share=args.task_share)
    print(f"SOAK {args.minutes:g} min at {args.rate:g}/s, {result['deliveries']} deliveries, {result['restarts']} "
          f"worker restarts, statuses {result['statuses']}, tasks {result['counts']}")
    for key, row in result["summary"].items():
        print(f"  {key:28} first {row['first']:>8} warm {row['warm']:>8} last {row['last']:>8} "
              f"max {row['max']:>8}  {row['verdict']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
