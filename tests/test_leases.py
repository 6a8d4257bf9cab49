"""Leases, fencing and the reconciler on real PostgreSQL and Redis."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
import redis
from sqlalchemy import update

from common.celery_app import make_celery
from common.db import Database
from common.errors import LeaseLost
from common.leases import Heartbeat, claim, load_fenced, renew
from common.models import Task, utcnow
from coordinator.dispatch import Dispatcher
from coordinator.reconciler import Reconciler
from tests.factories import make_task
from tests.support import queue_key

pytestmark = pytest.mark.integration


def state(db: Database, task_id: int) -> Task:
    with db.session() as session:
        return session.get(Task, task_id)


def expire_lease(db: Database, task_id: int) -> None:
    with db.session() as session:
        session.execute(update(Task).where(Task.id == task_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def test_claim_moves_to_running_and_a_second_claim_is_skipped(db: Database) -> None:
    task_id = make_task(db)
    held = claim(db, task_id, "w1")
    assert held is not None and held.attempt == 1 and held.token == 1
    assert state(db, task_id).state == "running"
    assert claim(db, task_id, "w2") is None  # the lease is live: never twice at once
    assert state(db, task_id).lease_owner == "w1"


def test_concurrent_claims_only_one_wins(db: Database) -> None:
    task_id = make_task(db)
    results: list[object] = []
    barrier = threading.Barrier(6)

    def worker(name: str) -> None:
        barrier.wait()
        results.append(claim(db, task_id, name))

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(result is not None for result in results) == 1
    assert state(db, task_id).attempt == 1


def test_expired_lease_is_taken_over_and_old_holder_is_fenced(db: Database) -> None:
    task_id = make_task(db)
    old = claim(db, task_id, "w1")
    expire_lease(db, task_id)
    new = claim(db, task_id, "w2")
    assert new is not None and new.token == old.token + 1 and new.attempt == 2
    with pytest.raises(LeaseLost):
        renew(db, old)
    with pytest.raises(LeaseLost), db.session() as session:
        load_fenced(session, old)
    renew(db, new)


def test_heartbeat_keeps_lease_alive_and_reports_loss(make_settings, db: Database) -> None:  # type: ignore[no-untyped-def]
    db = Database(make_settings(lease_seconds=2))
    try:
        task_id = make_task(db)
        held = claim(db, task_id, "w1")
        with Heartbeat(db, held, interval=0.3) as beat:
            time.sleep(2.5)  # longer than the lease: only heartbeats keep it
            assert state(db, task_id).lease_expires_at > utcnow()
            with db.session() as session:  # someone else takes the task over
                session.execute(update(Task).where(Task.id == task_id).values(lease_token=99))
            assert beat.lost.wait(3)
    finally:
        db.dispose()


def test_reaper_requeues_stale_runs_then_fails_after_max_attempts(make_settings, db: Database) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(max_attempts=2)
    celery = make_celery(settings)
    reconciler = Reconciler(Database(settings), Dispatcher(Database(settings), celery))
    task_id = make_task(db)
    claim(reconciler.db, task_id, "w1")
    expire_lease(db, task_id)
    report = reconciler.run_once()
    assert report.requeued == [task_id] and report.resent == [task_id]
    assert state(db, task_id).state == "queued"
    messages = redis.Redis.from_url(settings.broker_url).lrange(queue_key("backend"), 0, -1)
    assert [json.loads(m)["headers"]["kwargsrepr"] for m in messages] == [f"{{'task_id': {task_id}}}"]
    claim(reconciler.db, task_id, "w2")
    expire_lease(db, task_id)
    report = reconciler.run_once()
    assert report.failed == [task_id]
    task = state(db, task_id)
    assert task.state == "failed" and "worker lost on 2 attempts" in task.failure_reason
    with db.session() as session:
        details = [e.detail for e in session.get(Task, task_id).events]
    assert any("requeued" in d for d in details) and any("giving up" in d for d in details)


def test_a_worker_finding_the_last_attempt_lost_fails_it_with_the_reapers_reason(make_settings, db: Database
                                                                                 ) -> None:  # type: ignore[no-untyped-def]
    """The message can reach a worker before the reaper sees the lease expire; the reason still says
    how many times, and whose, as the reaper's does."""
    last = Database(make_settings(max_attempts=1))
    try:
        task_id = make_task(db)
        claim(last, task_id, "w1")
        expire_lease(db, task_id)
        assert claim(last, task_id, "w2") is None
    finally:
        last.dispose()
    task = state(db, task_id)
    assert task.state == "failed" and task.failure_reason == "worker lost on 1 attempts (last: w1)"


def test_a_worker_taking_over_an_expired_lease_closes_the_lost_run(db: Database) -> None:
    """Before the reaper comes by, a message can reach a worker; the dead worker's run still ends as lost."""
    from common.models import TaskRun
    from workers.runs import start_run

    task_id = make_task(db)
    lost = start_run(db, claim(db, task_id, "w1"))
    expire_lease(db, task_id)
    taken = claim(db, task_id, "w2")
    assert taken is not None and taken.attempt == 2
    with db.session() as session:
        run = session.get(TaskRun, lost)
        assert (run.outcome, run.detail) == ("lost", "worker w1 stopped renewing its lease") and run.finished_at


def test_live_leases_are_left_alone(make_settings, db: Database) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    reconciler = Reconciler(Database(settings), Dispatcher(Database(settings), make_celery(settings)))
    task_id = make_task(db)
    claim(db, task_id, "w1")
    assert reconciler.run_once().requeued == []
    assert state(db, task_id).state == "running"


def test_a_late_send_record_never_moves_a_claimed_task(settings, db: Database) -> None:  # type: ignore[no-untyped-def]
    task_id = make_task(db)
    assert claim(db, task_id, "w1") is not None  # the message beat the dispatcher's commit
    Dispatcher(db, make_celery(settings)).record_sent(task_id, 1, actor="dispatcher", note="resent")
    task = state(db, task_id)
    assert (task.state, task.dispatched_at) == ("running", None)
    with db.session() as session:
        assert [e.to_state for e in session.get(Task, task_id).events][-1] == "running"
