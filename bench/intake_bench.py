"""Intake throughput: signed deliveries a second through the real coordinator, against a bare endpoint.

The coordinator runs as `forgecrew coordinator` (its default number of processes, uvloop and
httptools) on a scratch PostgreSQL database and a Redis database of its own; every delivery is an
`issues.labeled` with its own delivery id and issue number, so each one creates, commits and sends
a task. The baseline is a minimal ASGI app on the same server settings that only checks the HMAC
signature and answers 202. Load comes from wrk (Debian: `apt-get install wrk`) replaying requests
signed beforehand, so the load generator spends no time hashing.

    python bench/intake_bench.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-webhook-secret-0123456789"
PG_ADMIN = os.environ.get("FORGECREW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("FORGECREW_TEST_REDIS", "redis://127.0.0.1:6379")
HEADLINE_CONNECTIONS = 16
SWEEP = (1, 4, 16, 64)
WRK_THREADS = 2
# requests signed beforehand per wrk thread and run: more than a run can send, so none repeats
REQUESTS_PER_THREAD = 40_000

LUA = r"""
local reqs, i = {}, 0
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  local dir = args[1]
  local lengths = io.open(dir .. "/lengths." .. id, "r")
  local data = io.open(dir .. "/requests." .. id, "rb"):read("*a")
  local pos = 1
  for line in lengths:lines() do
    local n = tonumber(line)
    reqs[#reqs + 1] = data:sub(pos, pos + n - 1)
    pos = pos + n
  end
end
function request()
  i = i + 1
  if i > #reqs then i = 1 end
  return reqs[i]
end
function done(summary, latency, requests)
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, '
    .. '"p50_us": %d, "p99_us": %d}\n', summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The baseline: read the body, check X-Hub-Signature-256, answer 202 (or 401)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    _, ok = await _verified_body(scope, receive)
    await _answer(send, ok)


async def _verified_body(scope: dict[str, Any], receive: Any) -> tuple[bytes, bool]:
    """The request body, and whether its X-Hub-Signature-256 is right."""
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    header = dict(scope["headers"]).get(b"x-hub-signature-256", b"")
    expected = b"sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest().encode()
    return body, hmac.compare_digest(expected, header)


async def _answer(send: Any, ok: bool) -> None:
    await send({"type": "http.response.start", "status": 202 if ok else 401,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"status":"accepted"}' if ok else b"{}"})


class DurableApp:
    """The floor of any durable intake: bare_app plus one committed row per delivery (async psycopg, no ORM).

    Each process keeps a few connections; a delivery id seen before is skipped as the coordinator
    skips it. What the coordinator spends above this is its own work; what this spends above
    bare_app is PostgreSQL's commit on this host.
    """

    CONNECTIONS = 4

    def __init__(self) -> None:
        self.free: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        import asyncio

        import psycopg

        if scope["type"] == "lifespan":
            url = os.environ["FORGECREW_DATABASE_URL"]
            self.free = asyncio.Queue()
            for _ in range(self.CONNECTIONS):
                self.free.put_nowait(await psycopg.AsyncConnection.connect(url, autocommit=True))
            await bare_app(scope, receive, send)
            return
        body, ok = await _verified_body(scope, receive)
        headers = dict(scope["headers"])
        if ok:
            payload = json.loads(body)
            connection = await self.free.get()
            try:
                await connection.execute(
                    "INSERT INTO webhook_deliveries (delivery_id, event, action, outcome, received_at, payload) "
                    "VALUES (%s, 'issues', %s, 'received', now(), %s) ON CONFLICT (delivery_id) DO NOTHING",
                    (headers.get(b"x-github-delivery", b"").decode(), payload.get("action"), body.decode()))
            finally:
                self.free.put_nowait(connection)
        await _answer(send, ok)


durable_app = DurableApp()


class Issues:
    """Distinct, signed issues.labeled deliveries; issue numbers never repeat within a bench run."""

    def __init__(self, host: str, port: int) -> None:
        self.next_number = 1
        self.host = f"{host}:{port}"

    def write(self, directory: Path, threads: int, per_thread: int) -> None:
        for thread in range(threads):
            lengths, chunks = [], []
            for _ in range(per_thread):
                raw = self._request(self.next_number)
                self.next_number += 1
                lengths.append(str(len(raw)))
                chunks.append(raw)
            (directory / f"requests.{thread}").write_bytes(b"".join(chunks))
            (directory / f"lengths.{thread}").write_text("\n".join(lengths) + "\n")

    def _request(self, number: int) -> bytes:
        body = json.dumps({
            "action": "labeled",
            "issue": {"number": number, "title": f"Bench issue {number}", "body": "Make it faster.",
                      "state": "open", "author_association": "OWNER", "user": {"login": "bench", "type": "User"},
                      "labels": [{"name": "forgecrew:backend"}]},
            "label": {"name": "forgecrew:backend"},
            "repository": {"full_name": "bench/intake", "name": "intake", "owner": {"login": "bench"}},
            "sender": {"login": "bench", "type": "User"},
        }, separators=(",", ":")).encode()
        signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        head = (f"POST /webhooks/github HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"X-GitHub-Event: issues\r\nX-GitHub-Delivery: {uuid.uuid4()}\r\n"
                f"X-Hub-Signature-256: {signature}\r\nUser-Agent: GitHub-Hookshot/bench\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        return head.encode() + body


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_ready(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server not listening on {port} after {timeout}s: {log.read_text()[-2000:]}")


class Server:
    """A server process group, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, port: int) -> None:
        self.log = log
        self.process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        _wait_ready(port, self.process, log)
        time.sleep(0.5)  # every process of the group is listening

    def stop(self) -> None:
        import signal

        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()


def _wrk(port: int, connections: int, seconds: float, directory: Path) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t", str(min(WRK_THREADS, connections)), "-c", str(connections), "-d", f"{seconds:g}s",
         "--timeout", "10s", "-s", str(directory / "load.lua"), f"http://127.0.0.1:{port}/webhooks/github",
         "--", str(directory)],
        capture_output=True, text=True, check=True, timeout=seconds + 60)
    line = next(x for x in out.stdout.splitlines() if x.startswith("WRKJSON "))
    raw = json.loads(line[len("WRKJSON "):])
    if raw["status_errors"] or raw["socket_errors"]:
        raise RuntimeError(f"{raw['status_errors']} non-2xx answers and {raw['socket_errors']} socket errors: "
                           f"{out.stdout[-1500:]}")
    return {"rps": raw["requests"] / (raw["duration_us"] / 1e6), "p50_ms": raw["p50_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000, "requests": raw["requests"]}


class Bench:
    def __init__(self, work: Path, quick: bool) -> None:
        import psycopg

        from common import migrate
        from common.settings import Settings
        from tests import redis_slots

        self.work, self.quick = work, quick
        self.db_name = f"forgecrew_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        self.db_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{self.db_name}"
        migrate.upgrade(Settings(database_url=self.db_url))
        self.slot = redis_slots.claim(REDIS_URL)
        self.broker_url = f"{REDIS_URL}/{self.slot.number}"
        self.port = _free_port()
        self.issues = Issues("127.0.0.1", self.port)
        (work / "home").mkdir()
        (work / "load.lua").write_text(LUA)
        self.env = {**os.environ, "FORGECREW_DATABASE_URL": self.db_url, "FORGECREW_BROKER_URL": self.broker_url,
                    "FORGECREW_WEBHOOK_SECRET": SECRET, "FORGECREW_REPO_ALLOWLIST": "bench/*",
                    "FORGECREW_HOME": str(work / "home"), "PYTHONPATH": str(ROOT)}

    def close(self) -> None:
        import psycopg
        import redis

        redis.Redis.from_url(self.broker_url).flushdb()
        self.slot.release()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def coordinator(self) -> Server:
        argv = [sys.executable, "-m", "coordinator.cli", "--log-level", "WARNING", "coordinator",
                "--host", "127.0.0.1", "--port", str(self.port)]
        return Server(argv, self.env, self.work / "coordinator.log", self.port)

    def bare(self, app: str = "bare_app") -> Server:
        from common.settings import Settings
        from coordinator.serve import default_workers

        workers = default_workers(Settings(database_url=self.db_url))
        argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "bench"), f"intake_bench:{app}",
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers), "--no-access-log",
                "--log-level", "warning", "--lifespan", "on"]
        return Server(argv, self.env, self.work / f"{app}.log", self.port)

    def load(self, connections: int, seconds: float) -> dict[str, float]:
        self.issues.write(self.work, min(WRK_THREADS, connections), REQUESTS_PER_THREAD // (3 if self.quick else 1))
        return _wrk(self.port, connections, seconds, self.work)

    def tasks_queued(self) -> tuple[int, int]:
        import psycopg

        with psycopg.connect(self.db_url) as conn:
            total = conn.execute("SELECT count(*) FROM tasks").fetchone()[0]
            queued = conn.execute("SELECT count(*) FROM tasks WHERE state = 'queued'").fetchone()[0]
        return int(total), int(queued)


def _run_server(bench: Bench, start: Any, plan: list[tuple[int, float]]) -> list[dict[str, float]]:
    server = start()
    try:
        bench.load(HEADLINE_CONNECTIONS, 1.0)  # warm up: connections, imports, caches
        return [bench.load(connections, seconds) for connections, seconds in plan]
    finally:
        server.stop()


def measure(*, quick: bool, repeats: int) -> dict:
    """{"figures": {"intake.rps": [...], ...}, "series": {"intake_vs_connections": [...]}}: raw samples."""
    if not shutil.which("wrk"):
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk)")
    headline_seconds = 4.0 if quick else 10.0
    sweep_seconds = 2.0 if quick else 5.0
    figures: dict[str, list[float]] = {key: [] for key in
                                       ("intake.rps", "intake.bare_rps", "intake.ratio", "intake.p50_ms",
                                        "intake.p99_ms", "intake.durable_rps", "intake.durable_ratio")}
    series: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="forgecrew-intake-bench-") as tmp:
        bench = Bench(Path(tmp), quick)
        try:
            plan = [(HEADLINE_CONNECTIONS, headline_seconds)] * repeats + [(c, sweep_seconds) for c in SWEEP]
            bare = _run_server(bench, bench.bare, plan)
            durable = _run_server(bench, lambda: bench.bare("durable_app"), plan[:repeats])
            real = _run_server(bench, bench.coordinator, plan)
            time.sleep(1.0)  # the last sends are recorded
            total, queued = bench.tasks_queued()
            if total == 0 or queued != total:
                raise RuntimeError(f"{total} tasks made, {queued} of them queued: intake lost sends")
            for durable_run, bare_run in zip(durable, bare[:repeats]):
                figures["intake.durable_rps"].append(durable_run["rps"])
                figures["intake.durable_ratio"].append(durable_run["rps"] / bare_run["rps"])
            for coordinator_run, bare_run in zip(real[:repeats], bare[:repeats]):
                figures["intake.rps"].append(coordinator_run["rps"])
                figures["intake.bare_rps"].append(bare_run["rps"])
                figures["intake.ratio"].append(coordinator_run["rps"] / bare_run["rps"])
                figures["intake.p50_ms"].append(coordinator_run["p50_ms"])
                figures["intake.p99_ms"].append(coordinator_run["p99_ms"])
            for (connections, _), coordinator_run, bare_run in zip(plan[repeats:], real[repeats:], bare[repeats:]):
                series.append({"connections": connections, "rps": coordinator_run["rps"],
                               "bare_rps": bare_run["rps"], "p50_ms": coordinator_run["p50_ms"],
                               "p99_ms": coordinator_run["p99_ms"]})
        finally:
            bench.close()
    return {"figures": figures, "series": {"intake_vs_connections": series}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (about a minute in all)")
    parser.add_argument("--repeats", type=int, default=None, help="headline runs (default 1 quick, 3 otherwise)")
    args = parser.parse_args()
    result = measure(quick=args.quick, repeats=args.repeats or (1 if args.quick else 3))
    for key, samples in result["figures"].items():
        print(f"{key:18} " + "  ".join(f"{value:9.2f}" for value in samples))
    print(f"{'connections':>11} {'rps':>9} {'bare_rps':>9} {'ratio':>6} {'p50_ms':>8} {'p99_ms':>8}")
    for row in result["series"]["intake_vs_connections"]:
        print(f"{row['connections']:>11} {row['rps']:9.1f} {row['bare_rps']:9.1f} {row['rps'] / row['bare_rps']:6.3f} "
              f"{row['p50_ms']:8.2f} {row['p99_ms']:8.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
