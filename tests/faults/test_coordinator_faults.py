"""Faults 5 and 6: a coordinator killed between commit and send; 50 different deliveries for one issue."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from common.db import Database
from common.models import Task, WebhookDelivery
from common.settings import Settings
from common.specialties import queue_names
from tests.conftest import settings_env
from tests.fakes.anthropic_server import FakeAnthropic
from tests.faults.support import (REPO, Forge, await_ready, deliver, queued_messages, record_fault, serve_per_issue,
                                  spawn_workers, start_workers, story, wait_final)
from tests.sample_repo import ISSUE_BODY, ISSUE_TITLE, fixing_script
from tests.support import Process, free_port, headers, labeled_issue, payload, start_coordinator, wait_for

pytestmark = pytest.mark.integration


class BlackHole:
    """A "broker" that takes connections and every byte sent to it, and never answers: a send to it
    hangs until the sender gives up, so a coordinator killed meanwhile dies mid-send."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self._held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._held.append(conn)
            threading.Thread(target=self._swallow, args=(conn,), daemon=True).start()

    def _swallow(self, conn: socket.socket) -> None:
        while chunk := _recv(conn):
            self.received += len(chunk)

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()


def _recv(conn: socket.socket) -> bytes:
    try:
        return conn.recv(65536)
    except OSError:
        return b""


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def coordinator_process(env: dict[str, str], tmp: Path, *args: str) -> tuple[Process, str]:
    port = free_port()
    proc = Process(["coordinator", "--host", "127.0.0.1", "--port", str(port), *args], env,
                   tmp / f"coordinator-{port}.log")
    return proc, f"http://127.0.0.1:{port}"


def sends(task_events: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    return [(actor, detail) for _, actor, detail in task_events if detail.startswith("sent to queue")]


def test_coordinator_killed_between_commit_and_send_the_reconciler_sends_it(
        fault_settings: Callable[..., Settings], db: Database, model: FakeAnthropic, forge: Forge,
        black_hole: BlackHole, tmp_path: Path, processes: list[Process]) -> None:
    """The 202 goes out once the task is committed; the coordinator dies while publishing it. A fresh
    coordinator's reconciler sends it once, and it runs once."""
    serve_per_issue(model, {ISSUE_TITLE: fixing_script()})
    forge.add_issue(1, ISSUE_TITLE, ISSUE_BODY)
    settings = fault_settings()
    booting = spawn_workers(settings_env(settings), tmp_path, "backend", 1, processes)
    doomed_settings = settings.model_copy(update={"broker_url": black_hole.url, "dispatch_timeout_seconds": 30.0})
    doomed, url = coordinator_process(settings_env(doomed_settings), tmp_path, "--workers", "1", "--no-reconciler")
    processes.append(doomed)
    wait_for(lambda: doomed.alive() and httpx.get(f"{url}/healthz", timeout=1).status_code == 200, timeout=60,
             what="first coordinator up")
    before = black_hole.received
    response = deliver(url, labeled_issue("forgecrew:backend", title=ISSUE_TITLE, body=ISSUE_BODY))
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    wait_for(lambda: black_hole.received > before, timeout=30, what="the publish to be under way")
    os.killpg(doomed.popen.pid, signal.SIGKILL)
    killed = time.monotonic()
    doomed.popen.wait(timeout=30)
    left = story(db, task_id)
    assert (left.state, left.dispatch_count) == ("triaged", 0)  # committed, never sent
    assert queued_messages(settings) == []

    coordinator, _ = start_coordinator(settings_env(settings), tmp_path)  # the restart, reconciler and all
    processes.append(coordinator)
    await_ready(booting)
    wait_for(lambda: story(db, task_id).state != "triaged", timeout=60, what="the reconciler's send")
    sent_after = time.monotonic() - killed
    end = wait_final(db, task_id)
    recovered = time.monotonic() - killed
    pulls = forge.pulls()
    record_fault("5 coordinator SIGKILL between commit and send", recovered=recovered,
                 lost=int(end.state != "pr_open"), duplicated=max(end.dispatch_count - 1, 0) + max(len(pulls) - 1, 0),
                 sent_after_seconds=round(sent_after, 1))
    assert end.state == "pr_open", (end.failure_reason, end.details())
    assert f"reconciler: resent [{task_id}]" in coordinator.log()  # the new coordinator's reconciler sent it
    # the send is recorded as such, or the worker took the message before the record, and says so
    [queued] = [(actor, detail) for to, actor, detail in end.events if to == "queued"]
    assert queued == ("reconciler", "sent to queue backend (resent after a failed send)") or (
        queued[0].startswith("backend-") and queued[1] == "message arrived before the dispatch was recorded"), queued
    assert end.dispatch_count == 1 and end.runs == [(1, "pr_open")]
    assert len(pulls) == 1 and list(forge.branches()) == [end.branch]
    assert queued_messages(settings) == []  # nothing left over to run it twice


def deliveries_for_one_issue(count: int) -> list[tuple[str, dict[str, Any]]]:
    """`count` different deliveries a busy issue can get at once: labels added, opened, reopened."""
    labels = ["forgecrew", "forgecrew:backend", "forgecrew:frontend", "forgecrew:testing", "forgecrew:devops"]
    found: list[tuple[str, dict[str, Any]]] = []
    for index in range(count):
        kind = index % 3
        data = labeled_issue(labels[index % len(labels)], title=ISSUE_TITLE, body=ISSUE_BODY)
        if kind:
            opened = copy.deepcopy(payload("issues", "opened"))
            opened["issue"] = {**data["issue"], "author_association": "OWNER"}
            opened["action"] = "opened" if kind == 1 else "reopened"
            data = opened
        found.append((str(uuid.uuid4()), data))
    return found


def test_fifty_different_deliveries_for_one_issue_at_once_make_one_task(
        fault_settings: Callable[..., Settings], db: Database, model: FakeAnthropic, forge: Forge, tmp_path: Path,
        processes: list[Process]) -> None:
    """Labels added, opened and reopened, 50 distinct delivery ids at the same moment, spread over three
    server processes: one task, one message, one run, one PR; every delivery recorded."""
    serve_per_issue(model, {ISSUE_TITLE: fixing_script()})
    forge.add_issue(1, ISSUE_TITLE, ISSUE_BODY)
    settings = fault_settings()
    env = settings_env(settings)
    coordinator, url = coordinator_process(env, tmp_path, "--workers", "3")
    processes.append(coordinator)
    wait_for(lambda: coordinator.log().count("Application startup complete") == 3, timeout=90, what="3 processes")
    bodies = [(delivery, json.dumps(data).encode()) for delivery, data in deliveries_for_one_issue(50)]
    barrier, statuses = threading.Barrier(len(bodies)), []

    def send(delivery: str, body: bytes) -> None:
        event_headers = headers("issues", body, delivery=delivery)
        with httpx.Client(timeout=60) as client:  # a connection each: the kernel spreads them over processes
            barrier.wait()
            statuses.append(client.post(f"{url}/webhooks/github", content=body, headers=event_headers).status_code)

    started = time.monotonic()
    threads = [threading.Thread(target=send, args=item) for item in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    answered = time.monotonic() - started
    with db.session() as session:
        task_ids = session.scalars(select(Task.id).where(Task.repo == REPO, Task.issue_number == 1)).all()
        recorded = session.scalar(select(func.count()).select_from(WebhookDelivery))
    wait_for(lambda: story(db, task_ids[0]).state == "queued", timeout=30, what="the send recorded")
    messages = queued_messages(settings)
    start_workers(env, tmp_path, ",".join(queue_names(settings)), 1, processes)
    end = wait_final(db, task_ids[0])
    pulls = forge.pulls()
    record_fault("6 fifty different deliveries for one issue at once", recovered=None, lost=int(end.state != "pr_open"),
                 duplicated=max(len(task_ids) - 1, 0) + max(len(messages) - 1, 0) + max(len(end.runs) - 1, 0),
                 answered_in_seconds=round(answered, 2), tasks=len(task_ids), messages=len(messages))
    assert sorted(statuses) == [200] * 49 + [202]
    assert len(task_ids) == 1 and recorded == 50
    assert messages == [f"forgecrew-task-{task_ids[0]}-1"] and len(sends(end.events)) == 1
    assert end.state == "pr_open" and end.runs == [(1, "pr_open")] and len(pulls) == 1
