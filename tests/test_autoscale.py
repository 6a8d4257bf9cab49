"""Autoscaling: a real worker grows on its queue's depth, never past MAX, and shrinks back to MIN once it drains."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from common.celery_app import make_celery, message_id, send_run
from common.db import Database
from common.errors import SettingsError
from common.models import Task
from common.settings import Settings, SpecialtyConfig
from coordinator.cli import load_commands
from tests.conftest import settings_env
from tests.factories import make_task
from tests.fakes.anthropic_server import DEFAULT_KEY, FakeAnthropic, tool_use
from tests.support import Process, start_worker, wait_for
from tests.test_worker_pool import REPO, notes_repo
from workers.autoscale import Sizer, autoscale_plan, scalable_thread_pool, target_size


@pytest.fixture
def model() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


# -- the decision ---------------------------------------------------------------------------------


def test_the_target_is_what_the_worker_holds_plus_what_waits_within_the_range() -> None:
    assert target_size(held=1, waiting=5, minimum=1, maximum=3) == 3
    assert target_size(held=1, waiting=1, minimum=1, maximum=3) == 2
    assert target_size(held=0, waiting=0, minimum=2, maximum=3) == 2


def test_it_grows_at_once_and_shrinks_only_after_the_cooldown() -> None:
    sizer = Sizer(minimum=1, maximum=4, cooldown=30)
    assert sizer.next_size(current=1, held=1, waiting=2, now=100) == 3
    assert sizer.next_size(current=3, held=0, waiting=0, now=110) == 3  # needed 10 s ago: kept
    assert sizer.next_size(current=3, held=0, waiting=0, now=129) == 3
    assert sizer.next_size(current=3, held=0, waiting=0, now=131) == 1  # 31 s since it was needed
    sizer = Sizer(minimum=1, maximum=4, cooldown=30)
    sizer.next_size(current=3, held=3, waiting=0, now=0)  # all three busy
    assert sizer.next_size(current=3, held=2, waiting=0, now=20) == 3
    assert sizer.next_size(current=3, held=2, waiting=0, now=31) == 2  # never below what it holds
    assert sizer.next_size(current=2, held=2, waiting=1, now=32) == 3  # new work: at once


def test_the_thread_pool_grows_and_shrinks_within_its_ceiling() -> None:
    pool = scalable_thread_pool(3)(1)
    try:
        assert pool.num_processes == 1 and pool.executor._max_workers == 3
        pool.grow(5)
        assert pool.num_processes == 3
        pool.shrink(9)
        assert pool.num_processes == 1
    finally:
        pool.executor.shutdown()


def test_the_range_comes_from_the_flag_then_the_specialty_then_the_setting(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = make_settings(worker_autoscale="6,2", specialties=[
        SpecialtyConfig(name="backend", autoscale="4,1"), SpecialtyConfig(name="frontend", autoscale="5,1")])
    assert autoscale_plan(settings, ["backend"], "3,1").maximum == 3  # type: ignore[union-attr]
    assert autoscale_plan(settings, ["backend"]).maximum == 4  # type: ignore[union-attr]
    assert autoscale_plan(settings, ["testing"]).minimum == 2  # type: ignore[union-attr]
    assert autoscale_plan(make_settings(), ["backend"]) is None
    both = autoscale_plan(settings, ["backend", "frontend"])  # one worker for both: the widest range
    assert both is not None and (both.maximum, both.minimum) == (5, 1)
    with pytest.raises(SettingsError, match="MIN .2. is above MAX .1.; the order is MAX,MIN"):
        autoscale_plan(settings, ["backend"], "1,2")
    with pytest.raises(SettingsError, match="MIN must be at least 1"):
        autoscale_plan(settings, ["backend"], "3,0")
    with pytest.raises(ValueError, match="not MAX,MIN"):
        SpecialtyConfig(name="backend", autoscale="lots")


@pytest.mark.parametrize(("extra", "reason"), [
    (["--autoscale", "3,1", "-c", "2"], "drop --concurrency"),
    (["--autoscale", "3,1", "--pool", "solo"], "cannot autoscale"),
    (["--autoscale", "1,3"], "the order is MAX,MIN"),
])
def test_the_worker_command_refuses_a_wrong_range_with_a_reason(settings: Settings, extra: list[str],
                                                                  reason: str) -> None:
    env = {**settings_env(settings), "FORGECREW_ANTHROPIC_API_KEY": DEFAULT_KEY, "FORGECREW_FORGE": "local"}
    result = CliRunner().invoke(load_commands(), ["worker", "-s", "backend", *extra], env=env)
    assert result.exit_code != 0 and reason in result.output, result.output


# -- a real worker process ------------------------------------------------------------------------


class Held:
    """Every model call waits here until the test lets go; counts how many wait at once."""

    def __init__(self) -> None:
        self.lock, self.release = threading.Lock(), threading.Event()
        self.waiting = self.most = 0

    def __call__(self, body: dict[str, Any]) -> Any:
        with self.lock:
            self.waiting += 1
            self.most = max(self.most, self.waiting)
        try:
            assert self.release.wait(60), "the test never let the model answer"
        finally:
            with self.lock:
                self.waiting -= 1
        return tool_use("finish", {"summary": "Nothing to change."})


def worker_stats(settings: Settings) -> dict[str, Any] | None:
    """The one worker's `inspect stats` reply; None when it did not answer in time (a loaded host)."""
    replies = make_celery(settings).control.inspect(timeout=1).stats() or {}
    return next(iter(replies.values())) if replies else None


def autoscaler(settings: Settings) -> dict[str, Any] | None:
    stats = worker_stats(settings)
    return stats["autoscaler"] if stats else None


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_worker_grows_to_max_on_its_queue_depth_and_shrinks_back_when_it_drains(  # type: ignore[no-untyped-def]
        make_settings, db: Database, model: FakeAnthropic, tmp_path: Path, processes: list[Process],
        pool: str) -> None:
    settings: Settings = make_settings(forge="local", anthropic_api_key=DEFAULT_KEY, anthropic_base_url=model.base_url,
                                       worker_autoscale_interval_seconds=0.3, worker_autoscale_cooldown_seconds=2)
    notes_repo(settings, tmp_path)
    held = Held()
    model.add(*([held] * 8))
    processes.append(start_worker(settings_env(settings), tmp_path, "backend", "--autoscale", "3,1",
                                  "--pool", pool))
    assert wait_for(lambda: autoscaler(settings), timeout=10, what="the worker's stats")["current"] == 1
    app = make_celery(settings)
    ids = [make_task(db, repo=REPO, issue_number=None, title=f"Note {n}") for n in range(4)]
    for n, task_id in enumerate(ids):  # the last one low: its message is on another priority list of the queue
        send_run(app, settings, task_id=task_id, specialty="backend", message=message_id(task_id, 1),
                 priority=-1 if n == 3 else 0)

    # four waiting on a worker of one: it grows to three and runs three at once; the fourth waits
    wait_for(lambda: held.waiting == 3, timeout=20, interval=0.1, what="three sessions at once")
    stats = wait_for(lambda: (s := autoscaler(settings)) and s["waiting"] == 1 and s, timeout=10, what="the depth")
    assert stats["current"] == 3 and stats["held"] == 3
    pool_stats = wait_for(lambda: worker_stats(settings), timeout=10, what="the worker's stats")["pool"]
    assert pool_stats["max-concurrency"] == 3  # what `forgecrew workers` shows as CONC
    held.release.set()

    def finished() -> bool:
        with db.session() as session:
            return all(session.get(Task, task_id).state not in ("queued", "running", "testing") for task_id in ids)

    wait_for(finished, timeout=30, interval=0.3, what="every task to end")
    assert held.most == 3  # never past MAX
    wait_for(lambda: (s := autoscaler(settings)) and s["current"] == 1, timeout=15, interval=0.5,
             what="the worker to shrink back to MIN")
    assert "autoscaler: grew from 1 to 3" in processes[0].log()
    assert "autoscaler: shrank from 3 to 1" in processes[0].log()
    assert "Timed out waiting for UP message" not in processes[0].log()  # prefork: every grown process came up

    # Celery's own `celery control autoscale MAX MIN` moves the range of the running worker
    reply = wait_for(lambda: make_celery(settings).control.autoscale(5, 2, reply=True, timeout=2), timeout=10,
                     what="the worker's answer to autoscale")
    assert reply and "min=2" in str(reply) and ("max=3" if pool == "threads" else "max=5") in str(reply)
    wait_for(lambda: (s := autoscaler(settings)) and s["current"] == 2, timeout=10, interval=0.3,
             what="the worker to grow to its new MIN")
