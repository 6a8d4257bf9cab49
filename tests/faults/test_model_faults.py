"""Fault 7: the model misbehaves in every way the API allows, on one worker running the tasks at once.

529 overloaded (the fallback model takes over, or every model is overloaded), 429 with retry-after,
a request that times out, a stream cut mid-message, malformed tool input, a model that calls tools
for ever. Each ends bounded: recovered, or `failed` with the reason on the issue; then the same
worker takes the next task.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from common.db import Database
from common.settings import Settings
from tests.conftest import settings_env
from tests.fakes.anthropic_server import (FakeAnthropic, Reply, Spec, dropped, overloaded, rate_limited,
                                          tool_use)
from tests.faults.support import REPO, Forge, deliver, record_fault, wait_final
from tests.sample_repo import ISSUE_BODY, fixing_script
from tests.support import Process, labeled_issue, start_coordinator, start_worker

pytestmark = pytest.mark.integration
PRIMARY, FALLBACK = "claude-sonnet-4-6", "claude-haiku-4-5"
MAX_TURNS = 8
MODEL_TIMEOUT = 5.0  # long enough for any answer of the fake on a loaded host
RETRY_AFTER = 2.0

Step = Spec | Callable[[dict[str, Any]], Spec]


class ScriptedModel:
    """Per issue (its title in the first message), a queue of replies played in order; the last one
    repeats for ever. Every request is logged with its issue, model and arrival time."""

    def __init__(self, scripts: dict[str, Sequence[Step]]) -> None:
        self.scripts = {title: deque(steps) for title, steps in scripts.items()}
        self.log: list[tuple[str, str, float]] = []  # (title, model, time.monotonic())
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> Spec:
        first = json.dumps(body["messages"][0])
        [title] = [title for title in self.scripts if title in first]
        with self._lock:
            self.log.append((title, body["model"], time.monotonic()))
            queue = self.scripts[title]
            step = queue.popleft() if len(queue) > 1 else queue[0]
        return step(body) if callable(step) else step

    def requests(self, title: str) -> list[tuple[str, float]]:
        return [(model, at) for found, model, at in self.log if found == title]


def after_tool_error(body: dict[str, Any]) -> Spec:
    """The malformed call came back as an error the model can read; it starts over properly."""
    result = body["messages"][-1]["content"][0]
    assert result["type"] == "tool_result" and result["is_error"] is True, result
    return fixing_script()[0]


def slow(reply: Spec, seconds: float) -> Spec:
    assert isinstance(reply, Reply)
    return Reply(reply.content, reply.stop_reason, delay=seconds)


OVERLOADED_ONCE = "the primary model is overloaded today"
RATE_LIMITED = "rate limited, then a cut stream and a malformed call"
TIMED_OUT = "the first answer never comes in time"
ALL_OVERLOADED = "every model is overloaded"
TOOLS_FOREVER = "the model reads files for ever"
NEXT = "the next task after all that"


def scripts() -> dict[str, list[Step]]:
    fix = fixing_script()
    return {
        OVERLOADED_ONCE: [*[overloaded()] * 4, *fix],  # the primary's four attempts, then the fallback works
        RATE_LIMITED: [rate_limited(RETRY_AFTER), dropped(), tool_use("edit_file", {"path": "calc.py"}),
                       after_tool_error, *fix[1:]],
        TIMED_OUT: [slow(fix[0], MODEL_TIMEOUT + 5), *fix],
        ALL_OVERLOADED: [overloaded()],
        TOOLS_FOREVER: [tool_use("read_file", {"path": "calc.py"})],
        NEXT: fix,
    }


def issue_comments(forge: Forge, number: int) -> str:
    return "\n".join(comment["body"] for comment in forge.github.issue(REPO, number).comments)


def test_model_faults_end_bounded_with_reasons_and_the_worker_takes_the_next_task(
        fault_settings: Callable[..., Settings], db: Database, model: FakeAnthropic, forge: Forge, tmp_path: Path,
        processes: list[Process]) -> None:
    scripted = ScriptedModel(scripts())
    model.add(*[scripted] * 400)
    titles = [OVERLOADED_ONCE, RATE_LIMITED, TIMED_OUT, ALL_OVERLOADED, TOOLS_FOREVER, NEXT]
    for number, title in enumerate(titles, start=1):
        forge.add_issue(number, title, ISSUE_BODY)
    settings = fault_settings(model=PRIMARY, fallback_models=[FALLBACK], max_turns=MAX_TURNS,
                              model_timeout_seconds=MODEL_TIMEOUT)
    env = settings_env(settings)
    coordinator, url = start_coordinator(env, tmp_path)
    processes.append(coordinator)
    worker = start_worker(env, tmp_path, "backend", "--concurrency", "5")
    processes.append(worker)
    started = time.monotonic()
    task_ids = {}
    for number, title in enumerate(titles[:-1], start=1):
        response = deliver(url, labeled_issue("forgecrew:backend", number=number, title=title, body=ISSUE_BODY))
        assert response.status_code == 202, response.text
        task_ids[title] = response.json()["task_id"]
    ends = {title: wait_final(db, task_id, timeout=180) for title, task_id in task_ids.items()}
    faults_ended = time.monotonic() - started
    response = deliver(url, labeled_issue("forgecrew:backend", number=6, title=NEXT, body=ISSUE_BODY))
    assert response.status_code == 202, response.text
    ends[NEXT] = wait_final(db, response.json()["task_id"], timeout=120)

    limited = scripted.requests(RATE_LIMITED)
    waited_after_429 = limited[1][1] - limited[0][1]
    overloaded_everywhere = scripted.requests(ALL_OVERLOADED)
    backoff = overloaded_everywhere[-1][1] - overloaded_everywhere[0][1]
    pulls = forge.pulls()
    expected_ok = [OVERLOADED_ONCE, RATE_LIMITED, TIMED_OUT, NEXT]
    record_fault("7 model faults (529, 429 retry-after, timeout, cut stream, bad tool input, endless tools)",
                 recovered=faults_ended, lost=sum(ends[t].state != "pr_open" for t in expected_ok),
                 duplicated=max(len(pulls) - len(expected_ok), 0), model_requests=len(scripted.log),
                 waited_after_429_seconds=round(waited_after_429, 1),
                 all_overloaded_backoff_seconds=round(backoff, 1))
    for title in expected_ok:
        assert ends[title].state == "pr_open", (title, ends[title].failure_reason, ends[title].details())
        assert ends[title].runs == [(1, "pr_open")], title
    assert len(pulls) == len(expected_ok)

    # 529 on the primary: its four attempts, then the fallback answered that turn; each turn asks the
    # primary first again, and it had recovered
    models = [m for m, _ in scripted.requests(OVERLOADED_ONCE)]
    assert models == [PRIMARY] * 4 + [FALLBACK] + [PRIMARY] * (len(fixing_script()) - 1)
    # 429 honours retry-after; the cut stream is retried; the bad call was an observation
    assert RETRY_AFTER - 0.2 <= waited_after_429 <= RETRY_AFTER + 10
    assert len(limited) == 3 + len(fixing_script())  # 429, cut, malformed, then the four turns
    # the answer that never came was given up after the timeout and asked again
    assert len(scripted.requests(TIMED_OUT)) == 1 + len(fixing_script())

    # every model overloaded: bounded retries on each, then failed with the reason, said on the issue
    gave_up = ends[ALL_OVERLOADED]
    assert [m for m, _ in overloaded_everywhere] == [PRIMARY] * 4 + [FALLBACK] * 4
    assert gave_up.state == "failed" and gave_up.runs == [(1, "failed")]
    assert gave_up.failure_reason and "overloaded" in gave_up.failure_reason
    assert PRIMARY in gave_up.failure_reason and FALLBACK in gave_up.failure_reason
    assert "Anthropic API overloaded" in issue_comments(forge, 4)
    # a model that calls tools for ever stops at the turn budget, which the reason names
    endless = ends[TOOLS_FOREVER]
    assert endless.state == "failed" and len(scripted.requests(TOOLS_FOREVER)) == MAX_TURNS
    assert endless.failure_reason and f"FORGECREW_MAX_TURNS={MAX_TURNS}" in endless.failure_reason
    assert "turn budget exhausted" in issue_comments(forge, 5)
    assert worker.alive() and ends[NEXT].state == "pr_open"
