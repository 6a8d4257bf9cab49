from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from common.db import Database, db_now
from common.errors import IllegalTransition
from common.models import ACTIVE_TASK_SQL, Base, Task, TaskEvent
from common.settings import Settings
from common.states import ACTIVE_STATES, FINAL_STATES, LEASED_STATES, TRANSITIONS, TaskState
from common.transitions import record_creation, transition


class FakeSession:
    """Collects added rows; the state machine itself needs no database."""

    def __init__(self) -> None:
        self.added: list[object] = []

    def add(self, row: object) -> None:
        self.added.append(row)

    def add_all(self, rows: list[object]) -> None:
        self.added.extend(rows)


def test_happy_path_is_legal_and_logged_on_the_databases_clock(tmp_path: Path) -> None:
    database = Database(Settings(database_url=f"sqlite:///{tmp_path / 'states.db'}"))
    Base.metadata.create_all(database.engine)
    path = ["triaged", "queued", "running", "testing", "pr_open", "done"]
    with database.session() as session:
        task = Task(repo="a/b", specialty="backend", title="t", body="")
        record_creation(session, task, actor="test")
        session.flush()
        for state in path:
            transition(session, task, TaskState(state), actor="test")
        session.flush()
        events = session.scalars(select(TaskEvent).where(TaskEvent.task_id == task.id).order_by(TaskEvent.id)).all()
        assert [(e.from_state, e.to_state) for e in events] == list(zip([None, "pending", *path[:-1]],
                                                                        ["pending", *path]))
        assert task.updated_at == events[-1].at and abs(events[-1].at - db_now(session)) < timedelta(seconds=5)
    database.dispose()


@pytest.mark.parametrize("from_state,to_state", [("pending", "running"), ("done", "queued"), ("queued", "pr_open"),
                                                 ("failed", "running"), ("triaged", "running")])
def test_illegal_moves_are_refused(from_state: str, to_state: str) -> None:
    task = Task(id=7, repo="a/b", specialty="backend", state=from_state)
    with pytest.raises(IllegalTransition, match=f"task 7: illegal state change {from_state} -> {to_state}"):
        transition(FakeSession(), task, TaskState(to_state), actor="test")  # type: ignore[arg-type]
    assert task.state == from_state


def test_retry_moves_failed_back_to_queued() -> None:
    assert TaskState.QUEUED in TRANSITIONS[TaskState.FAILED]


def test_a_plan_waits_between_running_and_queued_holding_its_issue_but_no_lease() -> None:
    waiting = TaskState.AWAITING_APPROVAL
    assert waiting in TRANSITIONS[TaskState.RUNNING]
    assert TRANSITIONS[waiting] == {TaskState.QUEUED, TaskState.CANCELLED}  # approved or revised; or dropped
    assert waiting in ACTIVE_STATES and waiting not in LEASED_STATES and waiting not in FINAL_STATES
    assert "'awaiting_approval'" in ACTIVE_TASK_SQL  # the unique index keeps a second task off the issue


@pytest.mark.parametrize("from_state,to_state", [("awaiting_approval", "running"), ("awaiting_approval", "pr_open"),
                                                 ("queued", "awaiting_approval"), ("testing", "awaiting_approval")])
def test_a_waiting_plan_is_never_run_or_published_directly(from_state: str, to_state: str) -> None:
    task = Task(id=8, repo="a/b", specialty="backend", state=from_state)
    with pytest.raises(IllegalTransition, match=f"illegal state change {from_state} -> {to_state}"):
        transition(FakeSession(), task, TaskState(to_state), actor="test")  # type: ignore[arg-type]
