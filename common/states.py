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
    # a plan is posted on the issue and waits for `/forgecrew approve`; no worker or lease is held
    AWAITING_APPROVAL = "awaiting_approval"
    # held back before any worker sees it: a repository or installation limit, the requester's daily
    # quota, a dependency ("depends on #N") or an overlapping task; tasks.wait_reason says which
    WAITING = "waiting"


S = TaskState

TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    S.PENDING: frozenset({S.TRIAGED, S.WAITING, S.FAILED, S.CANCELLED}),
    S.TRIAGED: frozenset({S.QUEUED, S.WAITING, S.FAILED, S.CANCELLED}),
    # queued -> queued re-sends a lost message; running -> queued is the reaper re-queueing
    S.QUEUED: frozenset({S.QUEUED, S.RUNNING, S.WAITING, S.FAILED, S.CANCELLED}),
    # running -> awaiting_approval: a planning run posted its plan (workers/plans.py);
    # running/testing -> waiting: its change overlaps an earlier task's and the repository serializes them
    S.RUNNING: frozenset({S.TESTING, S.PR_OPEN, S.QUEUED, S.AWAITING_APPROVAL, S.WAITING, S.FAILED,
                          S.CANCELLED}),
    S.TESTING: frozenset({S.RUNNING, S.PR_OPEN, S.QUEUED, S.WAITING, S.FAILED, S.CANCELLED}),
    # a follow-up on an open PR runs the agent again on the same branch
    S.PR_OPEN: frozenset({S.DONE, S.QUEUED, S.CANCELLED, S.FAILED}),
    S.DONE: frozenset(),
    # failed -> done: a follow-up failed, but the pull request it left open was merged after all
    S.FAILED: frozenset({S.QUEUED, S.DONE}),
    S.CANCELLED: frozenset({S.QUEUED}),
    # approved (the change runs with the plan) or revised (a new planning run): queued either way
    S.AWAITING_APPROVAL: frozenset({S.QUEUED, S.CANCELLED}),
    # released (queued) once its reason clears; waiting -> waiting records a new reason
    S.WAITING: frozenset({S.QUEUED, S.WAITING, S.FAILED, S.CANCELLED}),
}

# States in which an issue counts as having work in flight; at most one such task per issue.
# awaiting_approval and waiting count: the next work is that task's, not a new one's.
ACTIVE_STATES: frozenset[TaskState] = frozenset({S.PENDING, S.TRIAGED, S.QUEUED, S.RUNNING, S.TESTING,
                                                 S.AWAITING_APPROVAL, S.WAITING})
# States a worker holds a lease in.
LEASED_STATES: frozenset[TaskState] = frozenset({S.RUNNING, S.TESTING})
FINAL_STATES: frozenset[TaskState] = frozenset({S.DONE, S.FAILED, S.CANCELLED, S.PR_OPEN})


def can_move(from_state: TaskState, to_state: TaskState) -> bool:
    return to_state in TRANSITIONS[from_state]
