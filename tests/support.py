"""Helpers for tests: fixture payloads, signed deliveries, and real server processes."""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from coordinator.webhooks.signature import sign

# Copies of ../shared/fixtures (see each folder's README for source and licence), kept in the
# repository so the tests run on any checkout; FORGECREW_FIXTURES points at another copy.
FIXTURES = Path(os.environ.get("FORGECREW_FIXTURES", Path(__file__).resolve().parent / "fixtures"))
WEBHOOKS = FIXTURES / "github-webhooks"
SECRET = "test-webhook-secret-0123456789"


def payload(event: str, name: str) -> dict[str, Any]:
    """A real GitHub example payload, parsed (callers adjust labels and associations)."""
    return json.loads((WEBHOOKS / event / f"{name}.json").read_text())


def raw_payload(event: str, name: str) -> bytes:
    return (WEBHOOKS / event / f"{name}.json").read_bytes()


def labeled_issue(label: str = "forgecrew", *, repo: str | None = None, number: int | None = None,
                  title: str | None = None, body: str | None = None) -> dict[str, Any]:
    """issues.labeled as GitHub sent it, with the label (and optionally repo/issue) changed."""
    data = copy.deepcopy(payload("issues", "labeled"))
    data["label"] = {**data["label"], "name": label}
    data["issue"]["labels"] = [{**data["label"]}]
    if repo:
        data["repository"]["full_name"] = repo
        data["repository"]["name"] = repo.split("/")[1]
        data["repository"]["owner"]["login"] = repo.split("/")[0]
    if number is not None:
        data["issue"]["number"] = number
    if title is not None:
        data["issue"]["title"] = title
    if body is not None:
        data["issue"]["body"] = body
    return data


def headers(event: str, body: bytes, *, secret: str = SECRET, delivery: str | None = None) -> dict[str, str]:
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(secret, body),
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/test",
    }


def deliver(url: str, event: str, data: dict[str, Any]) -> dict[str, Any]:
    """POST `data` signed to a running coordinator as GitHub would; its JSON answer (a 2xx is required)."""
    body = json.dumps(data).encode()
    response = httpx.post(f"{url}/webhooks/github", content=body, headers=headers(event, body), timeout=30)
    assert response.status_code in (200, 202), response.text
    return response.json()


def queue_key(queue: str, priority: int = 0) -> str:
    """The Redis list kombu keeps a queue's messages of this task priority in (celery_app.broker_priority)."""
    from common.celery_app import REDIS_SEP, REDIS_STEP_OF

    step = REDIS_STEP_OF[priority]
    return f"{queue}{REDIS_SEP}{step}" if step else queue


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30, interval: float = 0.2, what: str = "") -> Any:
    """Poll until `predicate` returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # the thing polled may not be up yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: last={last!r}")


class Process:
    """A forgecrew server process started by a test, stopped with SIGTERM at the end."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, prefix: list[str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.prefixed = bool(prefix)  # e.g. tests/unprivileged.prefix: signals go to the whole group
        self.popen = subprocess.Popen([*(prefix or []), sys.executable, "-m", "coordinator.cli", *args], env=env,
                                      stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 20) -> int:
        if self.alive():
            if self.prefixed:
                os.killpg(self.popen.pid, 15)
            else:
                self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, 9)
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


def start_coordinator(env: dict[str, str], tmp: Path) -> tuple[Process, str]:
    port = free_port()
    proc = Process(["coordinator", "--host", "127.0.0.1", "--port", str(port)], env, tmp / f"coordinator-{port}.log")
    url = f"http://127.0.0.1:{port}"
    with _stopped_on_failure(proc):
        wait_for(lambda: proc.alive() and httpx.get(f"{url}/healthz", timeout=1).status_code == 200,
                 timeout=30, what=f"coordinator on {port}")
    return proc, url


def start_worker(env: dict[str, str], tmp: Path, specialty: str, *extra: str,
                 prefix: list[str] | None = None) -> Process:
    name = f"{specialty}-{uuid.uuid4().hex[:6]}"
    proc = Process(["worker", "--specialty", specialty, "--hostname", f"{name}@test", *extra], env,
                   tmp / f"worker-{name}.log", prefix=prefix)
    with _stopped_on_failure(proc):
        wait_for(lambda: " ready." in proc.log() or not proc.alive(), timeout=60, what=f"worker {name} ready")
        assert proc.alive(), proc.log()
    return proc


@contextmanager
def _stopped_on_failure(proc: Process) -> Iterator[None]:
    """A server that never came up is stopped here: the caller never got it to stop, and a stray
    worker would go on consuming later tests' queues."""
    try:
        yield
    except BaseException:
        proc.stop()
        raise


class RedisServer:
    """A private redis-server on its own port, so a test can take the broker down and up."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.dir = tmp
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.popen = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", str(self.dir)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        wait_for(lambda: redis.Redis(port=self.port).ping(), timeout=10, what="private redis-server")

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.terminate()
            self.popen.wait(timeout=10)


def children_of(pid: int) -> list[int]:
    """Process ids whose parent is `pid`, read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
