"""The default worker pool (threads): many sessions in one process, time limits enforced by forgecrew."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.celery_app import RUN_TASK, make_celery, message_id, send_run
from common.db import Database
from common.forge.local import LocalForge
from common.models import Task
from common.settings import Settings
from tests.conftest import settings_env
from tests.factories import make_task
from tests.fakes.anthropic_server import DEFAULT_KEY, FakeAnthropic, tool_use
from tests.support import Process, start_worker, wait_for
from workers.sizing import auto_concurrency, worker_concurrency
from workers.watchdog import SoftLimitReached, TimeLimits

REPO = "acme/notes"


@pytest.fixture
def model() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


# -- the watchdog on its own ---------------------------------------------------------------------


def test_soft_limit_stops_the_run_at_its_next_step_with_a_reason() -> None:
    with TimeLimits(soft=0.2, hard=60, task_id=1, on_hard=lambda reason: None) as limits:
        limits.check()  # before the limit: nothing
        time.sleep(0.4)
        with pytest.raises(SoftLimitReached, match="soft time limit of 0s"):
            limits.check()


def test_hard_limit_fails_the_task_then_exits_when_its_thread_hangs() -> None:
    failed: list[str] = []
    exited: list[int] = []
    release = threading.Event()

    def hung_task() -> None:
        with TimeLimits(soft=0.1, hard=0.3, task_id=7, on_hard=failed.append, grace=0.2, exit_process=exited.append):
            release.wait(5)  # a thread that ignores should_stop: stuck in a call

    thread = threading.Thread(target=hung_task)
    thread.start()
    wait_for(lambda: exited, timeout=5, interval=0.05, what="the watchdog to give up on the thread")
    release.set()
    thread.join()
    assert exited == [70] and "hard time limit" in failed[0]


def test_a_task_that_ends_in_time_leaves_no_watcher_behind() -> None:
    calls: list[str] = []
    with TimeLimits(soft=0.3, hard=0.5, task_id=2, on_hard=calls.append, exit_process=calls.append) as limits:
        pass
    time.sleep(0.6)
    limits.check()
    assert calls == [] and not limits._watcher.is_alive()


def test_auto_concurrency_is_sized_to_cores_and_memory(make_settings) -> None:  # type: ignore[no-untyped-def]
    assert auto_concurrency("threads", host_cores=2, memory_mb=24_000) == 32
    assert auto_concurrency("threads", host_cores=2, memory_mb=1_500) == 10  # memory caps it
    assert auto_concurrency("prefork", host_cores=4, memory_mb=24_000) == 4
    assert worker_concurrency(make_settings(worker_concurrency=5), "threads") == 5
    assert worker_concurrency(make_settings(), "threads", requested=3) == 3
    assert worker_concurrency(make_settings(), "solo") == 1


# -- a real worker process -----------------------------------------------------------------------


def session_script(delay: float) -> Any:
    """A reply for any of several concurrent sessions: list, write its own note, finish."""

    def reply(body: dict[str, Any]) -> Any:
        turn = (len(body["messages"]) + 1) // 2
        first = body["messages"][0]["content"]
        text = first if isinstance(first, str) else "".join(block.get("text", "") for block in first)
        title = text.split("Note ", 1)[1].split()[0]  # which session this is, from its own task message
        steps = [tool_use("list_files", {"path": "."}),
                 tool_use("write_file", {"path": f"note-{title}.md", "content": f"note {title}\n"}),
                 tool_use("finish", {"summary": f"Wrote note {title}."})]
        return dataclasses.replace(steps[min(turn, 3) - 1], delay=delay)

    return reply


def notes_repo(settings: Settings, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "README.md").write_text("# notes\n")
    LocalForge(settings).create_repo(REPO, source)


def test_one_worker_process_runs_sessions_concurrently_without_cross_talk(  # type: ignore[no-untyped-def]
        make_settings, db: Database, model: FakeAnthropic, tmp_path: Path, processes: list[Process]) -> None:
    settings: Settings = make_settings(forge="local", anthropic_api_key=DEFAULT_KEY, anthropic_base_url=model.base_url,
                                       repo_allowlist=["acme/*"])
    assert settings.worker_pool == "threads"  # the default under test
    notes_repo(settings, tmp_path)
    sessions = 4
    model.add(*([session_script(delay=1.0)] * (3 * sessions)))
    worker = start_worker(settings_env(settings), tmp_path, "backend", "--concurrency", str(sessions))
    processes.append(worker)
    app = make_celery(settings)
    ids = [make_task(db, repo=REPO, issue_number=None, title=f"Note n{n} please") for n in range(sessions)]
    started = time.monotonic()
    for task_id in ids:
        send_run(app, settings, task_id=task_id, specialty="backend", message=message_id(task_id, 1))

    def finished() -> list[Task] | None:
        with db.session() as session:
            tasks = [session.get(Task, task_id) for task_id in ids]
            return tasks if all(task.state in ("pr_open", "failed") for task in tasks) else None

    tasks = wait_for(finished, timeout=90, interval=0.3, what="every session to finish")
    elapsed = time.monotonic() - started
    assert [task.state for task in tasks] == ["pr_open"] * sessions, [t.failure_reason for t in tasks]
    assert elapsed < 3 * 1.0 * sessions, f"{sessions} sessions of 3 s took {elapsed:.1f}s: not concurrent"
    with db.session() as session:
        runs = [session.get(Task, task_id).runs[-1] for task_id in ids]
        workers = {run.worker for run in runs}
    assert len(workers) == 1  # one process held them all
    for n, (task, run) in enumerate(zip(tasks, runs, strict=True)):
        assert task.input_tokens and run.turns == 3
        transcript = Path(run.transcript_path).read_text()
        assert f"note-n{n}.md" in transcript
        assert not any(f"note-n{other}.md" in transcript for other in range(sessions) if other != n)
        checkout = settings.workspace_root / "tasks" / str(task.id)
        assert json.loads((checkout / "metadata.json").read_text())["state"] == "pr_open"
    prs = LocalForge(settings).pull_requests(REPO)
    assert len(prs) == sessions and len({pr["branch"] for pr in prs}) == sessions


def send_with_limits(settings: Settings, task_id: int, *, soft: float, hard: float) -> None:
    make_celery(settings).send_task(RUN_TASK, kwargs={"task_id": task_id}, task_id=message_id(task_id, 1),
                                    queue="backend", routing_key="backend", soft_time_limit=soft, time_limit=hard)


def test_a_task_past_its_soft_limit_is_stopped_with_a_clear_reason(  # type: ignore[no-untyped-def]
        make_settings, db: Database, model: FakeAnthropic, tmp_path: Path, processes: list[Process]) -> None:
    settings: Settings = make_settings(forge="local", anthropic_api_key=DEFAULT_KEY, anthropic_base_url=model.base_url,
                                       repo_allowlist=["acme/*"])
    notes_repo(settings, tmp_path)
    model.add(*[dataclasses.replace(tool_use("list_files", {"path": "."}), delay=1.0) for _ in range(20)])
    processes.append(start_worker(settings_env(settings), tmp_path, "backend"))
    task_id = make_task(db, repo=REPO, issue_number=None, title="Never ends")
    send_with_limits(settings, task_id, soft=2, hard=60)

    def ended() -> Task | None:
        with db.session() as session:
            task = session.get(Task, task_id)
            return task if task.state == "failed" else None

    task = wait_for(ended, timeout=30, interval=0.3, what="the soft limit to stop the task")
    assert "soft time limit of 2s" in task.failure_reason
    assert len(model.message_requests) <= 4  # stopped at the next step, not at the end of the script

    def run_outcome() -> str | None:  # the run row is finished just after the task's state
        with db.session() as session:
            return session.get(Task, task_id).runs[-1].outcome  # type: ignore[union-attr]

    assert wait_for(run_outcome, timeout=10, interval=0.2, what="the run's outcome") == "failed"


def test_a_thread_hung_past_its_hard_limit_fails_the_task_and_frees_the_worker(  # type: ignore[no-untyped-def]
        make_settings, db: Database, model: FakeAnthropic, tmp_path: Path, processes: list[Process]) -> None:
    settings: Settings = make_settings(forge="local", anthropic_api_key=DEFAULT_KEY, anthropic_base_url=model.base_url,
                                       repo_allowlist=["acme/*"])
    notes_repo(settings, tmp_path)
    model.add(dataclasses.replace(tool_use("list_files", {"path": "."}), delay=120))  # the model call never returns
    worker = start_worker(settings_env(settings), tmp_path, "backend")
    processes.append(worker)
    task_id = make_task(db, repo=REPO, issue_number=None, title="Hangs")
    send_with_limits(settings, task_id, soft=8, hard=8)  # past the first model call
    wait_for(lambda: model.message_requests, timeout=30, what="the model call that hangs")
    wait_for(lambda: not worker.alive(), timeout=30, interval=0.3, what="the worker to give up on its hung thread")
    assert worker.popen.returncode == 70, worker.log()[-2000:]
    assert "still running" in worker.log()
    with db.session() as session:
        task = session.get(Task, task_id)
        assert task.state == "failed" and "hard time limit of 8s" in task.failure_reason
        assert task.lease_owner is None  # released: a redelivered message finds nothing to run
