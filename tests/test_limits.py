"""Repository, installation and requester limits on PostgreSQL: their reasons, what counts, and the race."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from common import migrate
from common.db import Database
from common.models import Task, TaskEvent
from common.settings import Settings
from common.states import TaskState
from common.transitions import transition
from coordinator import admission, limits
from coordinator.intake import NewTask, insert_task
from coordinator.triage import TriageDecision

pytestmark = pytest.mark.integration


def new_task(db: Database, *, repo: str = "acme/calc", number: int = 1, state: str = "triaged",
             requester: str = "alice", installation: int | None = 7) -> int:
    with db.session() as session:
        task_id = insert_task(session, NewTask(repo, number, f"issue {number}", "", requested_by=requester,
                                               installation_id=installation),
                              TriageDecision("backend", "test"), actor="test")
        if state != "triaged":
            session.execute(update(Task).where(Task.id == task_id).values(state=state))
    return task_id


def reason(db: Database, settings: Settings, task_id: int) -> str | None:
    with db.session() as session:
        return limits.hold_reason(session, session.get(Task, task_id), settings)


@pytest.fixture
def limited(make_settings: Callable[..., Settings]) -> Callable[..., tuple[Settings, Database]]:
    made: list[Database] = []

    def make(**limits_: int) -> tuple[Settings, Database]:
        settings = make_settings(**limits_)
        made.append(Database(settings))
        return settings, made[-1]

    yield make
    for db in made:
        db.dispose()


def test_no_limit_configured_holds_nothing(db: Database, settings: Settings) -> None:
    assert not limits.configured(settings) and not admission.gated(settings)
    for number in range(1, 4):
        new_task(db, number=number, state="running")
    assert reason(db, settings, new_task(db, number=9)) is None


def test_repository_limit_counts_queued_running_and_testing_of_that_repository_only(
        db: Database, limited: Callable[..., tuple[Settings, Database]]) -> None:
    settings, _ = limited(max_running_per_repo=2)
    new_task(db, number=1, state="running")
    new_task(db, number=2, state="waiting")  # holds no slot
    new_task(db, number=3, state="awaiting_approval")  # neither
    new_task(db, repo="acme/other", number=1, state="running")
    candidate = new_task(db, number=4)
    assert reason(db, settings, candidate) is None  # 1 of 2
    new_task(db, number=5, state="testing")
    assert reason(db, settings, candidate) == ("repository acme/calc has 2 of 2 tasks running "
                                               "(FORGECREW_MAX_RUNNING_PER_REPO)")
    # a task already in flight is never counted against itself (the reaper's requeue, a resend)
    running = new_task(db, number=6, state="queued")
    assert "has 3 of 2" not in (reason(db, settings, running) or "")
    assert reason(db, settings, running).startswith("repository acme/calc has 2 of 2")


def test_installation_limit_spans_its_repositories(db: Database,
                                                   limited: Callable[..., tuple[Settings, Database]]) -> None:
    settings, _ = limited(max_running_per_installation=2)
    new_task(db, repo="acme/a", state="queued")
    new_task(db, repo="acme/b", state="running")
    new_task(db, repo="other/c", state="running", installation=8)
    assert reason(db, settings, new_task(db, repo="acme/d")) == (
        "installation 7 has 2 of 2 tasks running (FORGECREW_MAX_RUNNING_PER_INSTALLATION)")
    assert reason(db, settings, new_task(db, repo="other/d", installation=8)) is None
    assert reason(db, settings, new_task(db, repo="solo/e", installation=None)) is None  # not an App's


def test_daily_quota_counts_first_sends_in_the_last_day_and_says_when_one_frees(
        db: Database, limited: Callable[..., tuple[Settings, Database]]) -> None:
    settings, _ = limited(max_tasks_per_requester_per_day=2)
    sent = [new_task(db, number=n) for n in (1, 2)]
    never_sent = new_task(db, number=3)
    other = new_task(db, number=4, requester="bob")
    with db.session() as session:
        for task_id in [*sent, other]:
            transition(session, session.get(Task, task_id), TaskState.QUEUED, actor="test")
    candidate = new_task(db, number=5)
    held = reason(db, settings, candidate)
    assert held is not None and held.startswith(
        "requester alice has started 2 of 2 tasks in 24 h (FORGECREW_MAX_TASKS_PER_REQUESTER_PER_DAY); "
        "the next frees up at ")
    assert reason(db, settings, never_sent) == held  # a task never sent does not count, for anyone
    assert reason(db, settings, other) is None
    # the older first send moves past the window: one slot frees, and the reason names the next time
    with db.session() as session:
        for event in session.scalars(select(TaskEvent).where(TaskEvent.task_id == sent[0],
                                                             TaskEvent.to_state == "queued")):
            event.at -= timedelta(hours=25)
    assert reason(db, settings, candidate) is None


def test_admit_moves_an_admitted_triaged_task_to_queued_and_holds_the_next(
        db: Database, limited: Callable[..., tuple[Settings, Database]]) -> None:
    settings, limited_db = limited(max_running_per_repo=1)
    first, second = new_task(limited_db, number=1), new_task(limited_db, number=2)
    with limited_db.session() as session:
        assert admission.admit_many(session, [first, second], settings) == {first}
    with limited_db.session() as session:
        one, two = session.get(Task, first), session.get(Task, second)
        assert one.state == "queued" and one.dispatched_at is not None  # the slot is taken before any send
        assert two.state == "waiting" and two.wait_reason.startswith("repository acme/calc has 1 of 1")
        assert two.waiting_since is not None


def test_two_admitters_racing_for_one_slot_admit_one(
        db: Database, limited: Callable[..., tuple[Settings, Database]]) -> None:
    """Each transaction counts, then sleeps before committing; without the advisory lock both would admit."""
    settings, first_db = limited(max_running_per_repo=1)
    _, second_db = limited(max_running_per_repo=1)
    ids = [new_task(db, number=1), new_task(db, number=2)]
    counted = threading.Barrier(2, timeout=10)
    results: dict[int, bool] = {}
    original = limits._in_flight

    def slow_count(session, task, where):  # type: ignore[no-untyped-def]
        count = original(session, task, where)
        try:
            counted.wait(timeout=1)  # the second blocks on the lock, so this times out for the first
        except threading.BrokenBarrierError:
            pass
        return count

    def admit(database: Database, task_id: int) -> None:
        with database.session() as session:
            results[task_id] = admission.admit(session, session.get(Task, task_id, with_for_update=True),
                                               settings)

    limits._in_flight = slow_count  # type: ignore[assignment]
    try:
        threads = [threading.Thread(target=admit, args=(database, task_id))
                   for database, task_id in zip((first_db, second_db), ids, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        limits._in_flight = original  # type: ignore[assignment]
    assert sorted(results.values()) == [False, True]
    with db.session() as session:
        states = sorted(session.get(Task, task_id).state for task_id in ids)
    assert states == ["queued", "waiting"]


def test_lock_keys_are_stable_and_distinct() -> None:
    assert limits.lock_key("repo", "acme/calc") == limits.lock_key("repo", "acme/calc")
    assert limits.lock_key("repo", "acme/calc") != limits.lock_key("installation", "acme/calc")
    assert -(2 ** 63) <= limits.lock_key("requester", "alice") < 2 ** 63


def test_on_sqlite_the_locks_are_no_ops_and_the_checks_count_the_same(
        make_settings: Callable[..., Settings], tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`forgecrew up` runs on SQLite: one process, every transaction IMMEDIATE, no advisory locks."""
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'limits.db'}", max_running_per_repo=1,
                             max_tasks_per_requester_per_day=1)
    migrate.upgrade(settings)
    database = Database(settings)
    try:
        first, second = new_task(database, number=1), new_task(database, number=2, requester="bob")
        third = new_task(database, number=3, repo="acme/other", requester="carol")
        with database.session() as session:
            assert admission.admit_many(session, [first, second, third], settings) == {first, third}
        with database.session() as session:
            assert session.get(Task, second).wait_reason.startswith("repository acme/calc has 1 of 1")
        fourth = new_task(database, number=4, repo="acme/third")
        held = reason(database, settings, fourth)  # alice's first send (task 1) is in the window
        assert held is not None and held.startswith("requester alice has started 1 of 1 tasks in 24 h")
    finally:
        database.dispose()
