"""Load burst: thousands of signed deliveries at once against one real coordinator, then an audit.

The burst is built from GitHub's recorded payloads: issues labeled with forgecrew route labels for
several specialties and allowlisted repositories (each one a task), labels and repositories that
start nothing, issue comments, pull requests, pings, edits; 10 % are resent with the same
X-GitHub-Delivery and 5 % carry a wrong signature. No worker runs, so every task's message stays
on its Redis queue, where the audit finds it. The baseline is intake_bench's bare ASGI app
(signature check, 202) on the same server settings, hit by the same client with the same requests.

    python bench/burst.py --deliveries 5000 [--concurrency 32] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "bench"))

import intake_bench  # noqa: E402
from common.celery_app import REDIS_SEP  # noqa: E402
from tests.support import payload  # noqa: E402

ALLOWLIST = "acme/*,Codertocat/*"
REPOS = ("acme/api", "acme/web", "Codertocat/Hello-World")
SPECIALTIES = ("backend", "frontend", "testing", "devops", "general")
DUPLICATE_SHARE = 0.10
BAD_SIGNATURE_SHARE = 0.05
MESSAGE_TASK = re.compile(r"^forgecrew-task-(\d+)-(\d+)$")


@dataclass
class Item:
    """One request of the burst and what it must lead to."""

    delivery: str
    event: str
    body: bytes
    signature: str
    kind: str  # "task", "quiet" (recorded, starts nothing), "bad" (wrong signature)
    task: tuple[str, int, str] | None = None  # (repo, issue number, specialty) for kind "task"
    resend: bool = False


def sign(body: bytes, secret: str = intake_bench.SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _with_repo(data: dict[str, Any], repo: str) -> dict[str, Any]:
    owner, name = repo.split("/")
    data["repository"] = {**data["repository"], "full_name": repo, "name": name,
                          "owner": {**data["repository"]["owner"], "login": owner}}
    return data


def _labeled(repo: str, number: int, label: str) -> dict[str, Any]:
    data = _with_repo(payload("issues", "labeled"), repo)
    data["label"] = {**data["label"], "name": label}
    data["issue"] = {**data["issue"], "number": number, "labels": [dict(data["label"])],
                     "title": f"Burst issue {number}"}
    return data


class Mix:
    """Valid, distinct deliveries in a fixed proportion of kinds; issue numbers never repeat."""

    QUIET = (("issue_comment", "created", 12), ("issue_comment", "edited", 4), ("pull_request", "opened", 10),
             ("pull_request", "reopened", 3), ("ping", "payload", 5), ("issues", "edited", 5),
             ("issues", "assigned", 4), ("issues", "unlabeled", 3))
    TASK_WEIGHT, OTHER_LABEL_WEIGHT, FOREIGN_REPO_WEIGHT = 45, 5, 4

    def __init__(self, rng: random.Random, first_number: int = 1000, *, task_weight: float | None = None) -> None:
        self.rng, self.number = rng, first_number
        self.choices: list[tuple[str, Any]] = [("task", None), ("other_label", None), ("foreign_repo", None)]
        self.weights: list[float] = [self.TASK_WEIGHT if task_weight is None else task_weight,
                                     self.OTHER_LABEL_WEIGHT, self.FOREIGN_REPO_WEIGHT]
        for event, name, weight in self.QUIET:
            self.choices.append(("fixture", (event, name)))
            self.weights.append(weight)

    def next(self) -> Item:
        [(kind, extra)] = self.rng.choices(self.choices, self.weights)
        self.number += 1
        repo = self.rng.choice(REPOS)
        if kind == "task":
            specialty = SPECIALTIES[self.number % len(SPECIALTIES)]
            return self._item("issues", _labeled(repo, self.number, f"forgecrew:{specialty}"), "task",
                              (repo, self.number, specialty))
        if kind == "other_label":
            return self._item("issues", _labeled(repo, self.number, "bug"), "quiet")
        if kind == "foreign_repo":
            return self._item("issues", _labeled("stranger/elsewhere", self.number, "forgecrew:backend"), "quiet")
        event, name = extra
        data = payload(event, name)
        if "repository" in data and event != "ping":
            data = _with_repo(data, repo)
        return self._item(event, data, "quiet")

    def _item(self, event: str, data: dict[str, Any], kind: str, task: tuple[str, int, str] | None = None) -> Item:
        body = json.dumps(data, separators=(",", ":")).encode()
        return Item(str(uuid.uuid4()), event, body, sign(body), kind, task)


def build_burst(total: int, *, seed: int = 12) -> list[Item]:
    """`total` requests: 5 % bad signatures, 10 % resends of earlier valid ones, the rest distinct and valid."""
    rng = random.Random(seed)
    mix = Mix(rng)
    bad = round(total * BAD_SIGNATURE_SHARE)
    resends = round(total * DUPLICATE_SHARE)
    originals = [mix.next() for _ in range(total - bad - resends)]
    items = list(originals)
    for original in rng.choices(originals, k=resends):
        items.append(Item(original.delivery, original.event, original.body, original.signature, original.kind,
                          original.task, resend=True))
    for _ in range(bad):
        forged = mix.next()
        forged.signature, forged.kind, forged.task = sign(forged.body, "not-the-secret"), "bad", None
        items.append(forged)
    rng.shuffle(items)  # a resend may even arrive first, or at the same moment as its original
    return items


# ---- firing -------------------------------------------------------------------------------------

@dataclass
class Answer:
    status: int
    seconds: float
    body: dict[str, Any]


async def _fire(url: str, items: list[Item], concurrency: int) -> tuple[list[Answer], float]:
    """Send every item with `concurrency` requests in flight; the answers in order, and the wall time."""
    import httpx

    answers: list[Answer | None] = [None] * len(items)
    cursor = iter(range(len(items)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    began = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def lane() -> None:
            for index in cursor:
                item = items[index]
                headers = {"X-GitHub-Event": item.event, "X-GitHub-Delivery": item.delivery,
                           "X-Hub-Signature-256": item.signature, "Content-Type": "application/json",
                           "User-Agent": "GitHub-Hookshot/burst"}
                started = time.perf_counter()
                try:
                    response = await client.post("/webhooks/github", content=item.body, headers=headers)
                except httpx.TransportError as exc:  # counted (status 0), never retried: GitHub would not either
                    answers[index] = Answer(0, time.perf_counter() - started, {
                        "error": repr(exc), "request": index, "at_s": round(started - began, 3),
                        "after_s": round(time.perf_counter() - started, 3)})
                    continue
                seconds = time.perf_counter() - started
                try:
                    body = response.json()
                except ValueError:
                    body = {"raw": response.text[:200]}
                answers[index] = Answer(response.status_code, seconds, body)

        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    done = [answer for answer in answers if answer is not None]
    assert len(done) == len(items), "every request has an answer (or a counted error): the audit pairs them"
    return done, wall


def fire(url: str, items: list[Item], concurrency: int) -> tuple[list[Answer], float]:
    return asyncio.run(_fire(url, items, concurrency))


def timing(answers: list[Answer], wall: float) -> dict[str, float]:
    """Throughput and acknowledgement latency of one burst."""
    latencies = sorted(answer.seconds * 1000 for answer in answers)
    p99_index = min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))
    return {"rps": round(len(answers) / wall, 1), "p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(latencies[p99_index], 2), "seconds": round(wall, 2)}


def warm_up(url: str, requests: int = 40) -> None:
    """Each server process opens its connections and imports its handlers before the clock starts."""
    import httpx

    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(requests):
            client.get("/healthz")


# ---- the audit ----------------------------------------------------------------------------------

def queued_by_task(broker_url: str) -> dict[int, list[str]]:
    """Task id -> the queues holding a message for it (every list in the Redis db that holds Celery messages)."""
    import redis

    client = redis.Redis.from_url(broker_url)
    found: dict[int, list[str]] = {}
    for key in client.scan_iter(count=1000):
        if client.type(key) != b"list":
            continue
        for raw in client.lrange(key, 0, -1):
            message_id = json.loads(raw).get("headers", {}).get("id", "")
            matched = MESSAGE_TASK.match(message_id)
            if matched:
                # kombu keeps a queue's priority steps as `queue:step` lists (common/celery_app.py)
                found.setdefault(int(matched.group(1)), []).append(key.decode().rsplit(REDIS_SEP, 1)[0])
    return found


def wait_sent(db_url: str, expected: int, timeout: float = 120) -> None:
    """The sender publishes off the request path: wait until every task is queued (or time out and audit anyway)."""
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(db_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            total, pending = conn.execute("SELECT count(*), count(*) FILTER (WHERE state <> 'queued') "
                                          "FROM tasks").fetchone()
            if total >= expected and pending == 0:
                return
            time.sleep(0.5)


def audit(items: list[Item], answers: list[Answer], db_url: str, broker_url: str) -> dict[str, int]:
    """What the database and the queues hold, against what the burst must have left there."""
    import psycopg

    with psycopg.connect(db_url) as conn:
        rows = Counter(d for (d,) in conn.execute("SELECT delivery_id FROM webhook_deliveries"))
        tasks = conn.execute("SELECT id, repo, issue_number, specialty, dispatch_count FROM tasks").fetchall()
    valid = {item.delivery for item in items if item.kind != "bad"}
    bad = {item.delivery for item in items if item.kind == "bad"}
    expected = {item.task for item in items if item.kind == "task" and not item.resend}
    found = Counter((repo, number, specialty) for _, repo, number, specialty, _ in tasks)
    queues = queued_by_task(broker_url)
    created = Counter(item.delivery for item, answer in zip(items, answers) if answer.status == 202)
    return {
        "requests": len(items), "valid_distinct": len(valid), "resends": sum(item.resend for item in items),
        "bad_signatures": len(bad), "tasks_expected": len(expected), "tasks_found": len(tasks),
        "specialties": len({specialty for _, _, _, specialty, _ in tasks}),
        "lost": sum(1 for d in valid if rows[d] == 0) + sum(1 for t in expected if found[t] == 0),
        "duplicated": sum(n - 1 for d, n in rows.items() if n > 1) + sum(n - 1 for n in found.values() if n > 1)
        + sum(1 for t in found if t not in expected) + sum(n - 1 for n in created.values() if n > 1),
        "wrong_queue": sum(1 for task_id, _, _, specialty, _ in tasks if queues.get(task_id) != [specialty]),
        "not_sent_once": sum(1 for *_, count in tasks if count != 1),
        "server_errors": sum(1 for answer in answers if answer.status >= 500),
        "transport_errors": sum(1 for answer in answers if answer.status == 0),
        "bad_accepted": sum(1 for item, answer in zip(items, answers) if item.kind == "bad" and answer.status != 401),
        "bad_persisted": sum(1 for d in bad if rows[d]),
        "valid_refused": sum(1 for item, answer in zip(items, answers)
                             if item.kind != "bad" and answer.status not in (200, 202)),
    }


# ---- the run ------------------------------------------------------------------------------------

def run_burst(deliveries: int, concurrency: int = 32, *, baseline: bool = True) -> dict[str, Any]:
    """Baseline burst, then the coordinator's, then the audit; the figures and counts."""
    items = build_burst(deliveries)
    with tempfile.TemporaryDirectory(prefix="forgecrew-burst-") as tmp:
        bench = intake_bench.Bench(Path(tmp), quick=True)
        bench.env["FORGECREW_REPO_ALLOWLIST"] = ALLOWLIST
        # no worker and no GitHub here: the "still queued" comment would only fail to find a forge
        bench.env["FORGECREW_QUEUED_NOTICE_SECONDS"] = "0"
        url = f"http://127.0.0.1:{bench.port}"
        try:
            bare: dict[str, float] = {}
            if baseline:
                server = bench.bare()
                try:
                    warm_up(url)
                    bare = timing(*fire(url, [i for i in items if not i.resend], concurrency))
                finally:
                    server.stop()
            server = bench.coordinator()
            try:
                warm_up(url)
                answers, wall = fire(url, items, concurrency)
                wait_sent(bench.db_url, sum(1 for i in items if i.kind == "task" and not i.resend))
                counts = audit(items, answers, bench.db_url, bench.broker_url)
            finally:
                server.stop()
            problems = _log_problems(server.log)
        finally:
            bench.close()
    figures = timing(answers, wall)
    result: dict[str, Any] = {"deliveries": deliveries, "concurrency": concurrency, **figures, "counts": counts,
                              "statuses": dict(Counter(str(a.status) for a in answers)),
                              "transport_error_samples": [a.body for a in answers if a.status == 0][:3],
                              "coordinator_log_problems": problems}
    if bare:
        result.update(bare_rps=bare["rps"], bare_p50_ms=bare["p50_ms"], bare_p99_ms=bare["p99_ms"],
                      ratio=round(figures["rps"] / bare["rps"], 3))
    return result


def _log_problems(log: Path, limit: int = 40) -> list[str]:
    """The coordinator's warnings and errors with their tracebacks (it logs at WARNING here), bar the 401s."""
    found: list[str] = []
    in_traceback = False
    for line in log.read_text(errors="replace").splitlines():
        if " WARNING " in line or " ERROR " in line:
            in_traceback = False
            if "missing or wrong signature" not in line:  # the burst's own bad signatures
                found.append(line[:300])
        elif line.startswith("Traceback") or in_traceback:
            in_traceback = True
            found.append(line[:300])
    return found[:limit]


def report(result: dict[str, Any]) -> str:
    """The lines a person reads: throughput, latency, the baseline ratio, and the counts."""
    counts = result["counts"]
    lines = [f"BURST {result['deliveries']} deliveries, {result['concurrency']} in flight: "
             f"{result['rps']} deliveries/s, ack p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
             f"lost {counts['lost']}, duplicated {counts['duplicated']}"]
    if "ratio" in result:
        lines.append(f"  baseline (bare signature-checking app, same client): {result['bare_rps']} /s, "
                     f"p50 {result['bare_p50_ms']} ms, p99 {result['bare_p99_ms']} ms; ratio {result['ratio']}")
    lines.append("  " + ", ".join(f"{key} {value}" for key, value in counts.items()))
    lines.append(f"  statuses {result['statuses']}")
    for sample in result["transport_error_samples"]:
        lines.append(f"  transport error: {sample}")
    for line in result["coordinator_log_problems"]:
        lines.append(f"  coordinator: {line}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--no-baseline", action="store_true", help="skip the bare-app baseline")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    result = run_burst(args.deliveries, args.concurrency, baseline=not args.no_baseline)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    counts = result["counts"]
    bad = [key for key in ("lost", "duplicated", "wrong_queue", "not_sent_once", "server_errors", "transport_errors",
                           "bad_accepted",
                           "bad_persisted", "valid_refused") if counts[key]]
    if bad:
        sys.exit(f"burst failed: {', '.join(f'{key} {counts[key]}' for key in bad)}")


if __name__ == "__main__":
    main()
