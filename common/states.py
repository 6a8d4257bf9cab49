"""Task states and the legal moves between them."""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    PENDING = "pending"
    TRIAGED = "triaged"
    QUEUED = "queued"
    RUNNING = "running"
    TESTING = "testing"
    PR_OPEN = "pr_open"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


S = TaskState

TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    S.PENDING: frozenset({S.TRIAGED, S.FAILED, S.CANCELLED}),
    S.TRIAGED: frozenset({S.QUEUED, S.FAILED, S.CANCELLED}),
    # queued -> queued re-sends a lost message; running -> queued is the reaper re-queueing
    S.QUEUED: frozenset({S.QUEUED, S.RUNNING, S.FAILED, S.CANCELLED}),
    S.RUNNING: frozenset({S.TESTING, S.PR_OPEN, S.QUEUED, S.FAILED, S.CANCELLED}),
    S.TESTING: frozenset({S.RUNNING, S.PR_OPEN, S.QUEUED, S.FAILED, S.CANCELLED}),
    # a follow-up on an open PR runs the agent again on the same branch
    S.PR_OPEN: frozenset({S.DONE, S.QUEUED, S.CANCELLED, S.FAILED}),
    S.DONE: frozenset(),
    # failed -> done: a follow-up failed, but the pull request it left open was merged after all
    S.FAILED: frozenset({S.QUEUED, S.DONE}),
    S.CANCELLED: frozenset({S.QUEUED}),
}

# States in which an issue counts as having work in flight; at most one such task per issue.
ACTIVE_STATES: frozenset[TaskState] = frozenset({S.PENDING, S.TRIAGED, S.QUEUED, S.RUNNING, S.TESTING})
# States a worker holds a lease in.
LEASED_STATES: frozenset[TaskState] = frozenset({S.RUNNING, S.TESTING})
FINAL_STATES: frozenset[TaskState] = frozenset({S.DONE, S.FAILED, S.CANCELLED, S.PR_OPEN})


def can_move(from_state: TaskState, to_state: TaskState) -> bool:
    return to_state in TRANSITIONS[from_state]
