"""Fault 3: the broker goes down while webhooks arrive, and comes back empty (no persistence).

tests/test_intake_outbox.py already proves the outbox's half in one process (every delivery answered
while the broker is down, each task sent once it is back). Here it is the whole cluster on a private
redis-server that is killed and restarted empty: one task running, two queued whose messages die with
the broker, two delivered while it is down. Every task not yet started is sent again, none twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common.db import Database
from common.settings import Settings
from tests.conftest import settings_env
from tests.fakes.anthropic_server import FakeAnthropic
from tests.faults.services import RedisServer
from tests.faults.support import (Forge, deliver, queued_messages, record_fault, serve_per_issue, start_workers,
                                  story, wait_final)
from tests.sample_repo import ISSUE_BODY, fixing_script
from tests.support import Process, labeled_issue, start_coordinator, wait_for

pytestmark = pytest.mark.integration
RUNNING, QUEUED, DOWN = (1,), (2, 3), (4, 5)
QUEUED_RESEND_SECONDS = 3.0


def title(number: int) -> str:
    return f"issue {number} of the broker restart: add() subtracts"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def sends(db: Database, task_id: int) -> list[tuple[str, str]]:
    return [(actor, detail) for _, actor, detail in story(db, task_id).events if detail.startswith("sent to queue")]


def test_broker_restarted_empty_every_task_not_started_is_sent_again_none_twice(
        fault_settings: Callable[..., Settings], db: Database, model: FakeAnthropic, forge: Forge,
        private_redis: RedisServer, tmp_path: Path, processes: list[Process]) -> None:
    reached, opened = threading.Event(), threading.Event()

    def held(body: dict[str, Any]) -> Any:  # issue 1's first turn waits: its worker is busy meanwhile
        if not reached.is_set():
            reached.set()
            assert opened.wait(120), "the test never let issue 1 go on"
        return fixing_script()[0]

    scripts = {title(n): fixing_script() for n in (*QUEUED, *DOWN)}
    serve_per_issue(model, {title(1): [held, *fixing_script()[1:]], **scripts})
    for number in (*RUNNING, *QUEUED, *DOWN):
        forge.add_issue(number, title(number), ISSUE_BODY)
    settings = fault_settings(broker_url=private_redis.url, queued_resend_seconds=QUEUED_RESEND_SECONDS)
    env = settings_env(settings)
    coordinator, url = start_coordinator(env, tmp_path)
    processes.append(coordinator)
    [worker] = start_workers(env, tmp_path, "backend", 1, processes)

    def send(number: int) -> int:
        response = deliver(url, labeled_issue("forgecrew:backend", number=number, title=title(number),
                                              body=ISSUE_BODY))
        assert response.status_code == 202, response.text
        return int(response.json()["task_id"])

    ids = {1: send(1)}
    assert reached.wait(90), worker.log()[-3000:]
    ids.update({number: send(number) for number in QUEUED})
    wait_for(lambda: len(queued_messages(settings)) == 2 and all(story(db, ids[n]).state == "queued" for n in QUEUED),
             timeout=30, what="issues 2 and 3 waiting on the broker")
    private_redis.stop()
    ids.update({number: send(number) for number in DOWN})  # answered while the broker is down
    wait_for(lambda: all(f"task {ids[n]} stays unsent" in coordinator.log() for n in DOWN), timeout=60,
             what="the coordinator's sends to fail while the broker is down")
    assert [story(db, ids[n]).state for n in DOWN] == ["triaged", "triaged"]
    private_redis.start()  # empty: issues 2 and 3's messages are gone
    restarted = time.monotonic()
    assert queued_messages(settings) == []
    # issue 1 holds the only worker slot until every resend is recorded: a free worker could claim a
    # resent task before the reconciler records its send, and then the claim records the step instead
    wait_for(lambda: all(len(sends(db, ids[n])) == 2 for n in QUEUED) and all(len(sends(db, ids[n])) == 1
                                                                             for n in DOWN),
             timeout=60, what="the reconciler to resend every task not started")
    opened.set()
    ends = {number: wait_final(db, task_id, timeout=180) for number, task_id in ids.items()}
    recovered = time.monotonic() - restarted
    task_sends = {number: sends(db, task_id) for number, task_id in ids.items()}
    pulls = forge.pulls()
    record_fault("3 broker down while webhooks arrive, restarted empty", recovered=recovered,
                 lost=sum(end.state != "pr_open" for end in ends.values()),
                 duplicated=sum(max(len(end.runs) - 1, 0) for end in ends.values()) + max(len(pulls) - len(ids), 0),
                 resent_by_reconciler=sum(actor == "reconciler" for found in task_sends.values() for actor, _ in found))
    for number, end in ends.items():
        assert end.state == "pr_open", (number, end.failure_reason, end.details())
        assert end.runs == [(1, "pr_open")], (number, end.runs)  # each ran once
    # running when the broker died: never resent (its send may be recorded after its claim, or not at all)
    assert ends[1].dispatch_count <= 1 and all(actor == "dispatcher" for actor, _ in task_sends[1])
    assert [ends[n].dispatch_count for n in (*QUEUED, *DOWN)] == [2, 2, 1, 1]
    for number in QUEUED:
        assert task_sends[number] == [("dispatcher", "sent to queue backend"),
                                      ("reconciler", "sent to queue backend (resent: its message is no longer in "
                                                     "the broker)")], number
    for number in DOWN:
        assert task_sends[number] == [("reconciler", "sent to queue backend (resent after a failed send)")], number
    assert len(pulls) == len(ids) and sorted(pr.number for pr in pulls) == sorted(e.pr_number for e in ends.values())
    assert queued_messages(settings) == [] and worker.alive()
