import pytest

from common.errors import IllegalTransition
from common.models import Task
from common.states import TRANSITIONS, TaskState
from common.transitions import record_creation, transition


class FakeSession:
    """Collects added rows; the state machine itself needs no database."""

    def __init__(self) -> None:
        self.added: list[object] = []

    def add(self, row: object) -> None:
        self.added.append(row)

    def add_all(self, rows: list[object]) -> None:
        self.added.extend(rows)


def test_happy_path_is_legal_and_logged() -> None:
    session = FakeSession()
    task = Task(id=1, repo="a/b", specialty="backend")
    record_creation(session, task, actor="test")  # type: ignore[arg-type]
    path = ["triaged", "queued", "running", "testing", "pr_open", "done"]
    for state in path:
        transition(session, task, TaskState(state), actor="test")  # type: ignore[arg-type]
    events = [row for row in session.added if row is not task]
    assert [(e.from_state, e.to_state) for e in events] == list(zip([None, "pending", *path[:-1]], ["pending", *path]))


@pytest.mark.parametrize("from_state,to_state", [("pending", "running"), ("done", "queued"), ("queued", "pr_open"),
                                                 ("failed", "running"), ("triaged", "running")])
def test_illegal_moves_are_refused(from_state: str, to_state: str) -> None:
    task = Task(id=7, repo="a/b", specialty="backend", state=from_state)
    with pytest.raises(IllegalTransition, match=f"task 7: illegal state change {from_state} -> {to_state}"):
        transition(FakeSession(), task, TaskState(to_state), actor="test")  # type: ignore[arg-type]
    assert task.state == from_state


def test_retry_moves_failed_back_to_queued() -> None:
    assert TaskState.QUEUED in TRANSITIONS[TaskState.FAILED]
