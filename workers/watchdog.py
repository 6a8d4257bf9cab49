"""Soft and hard time limits of one task, enforced by forgecrew itself: Celery's threads pool ignores them.

Soft limit: the run is asked to stop at its next step (the agent's should_stop raises
SoftLimitReached) and fails with a reason that names the limit. Hard limit: the task is failed and
its lease released in the database, fenced by the claim, so whatever its thread still does writes
nothing; if the thread has not ended `grace` seconds later, the worker process exits. Its other
tasks' messages are unacked (acks_late) and come back, and their leases expire and are reaped,
exactly as when a worker is SIGKILLed: the fencing token keeps each task to one live run.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Self

from celery.exceptions import SoftTimeLimitExceeded

from common.db import Database
from common.errors import LeaseLost
from common.leases import Claim, load_fenced, release
from common.states import TaskState
from common.transitions import transition

log = logging.getLogger(__name__)

# Exit status of a worker process whose task thread outlived its hard limit (EX_SOFTWARE).
HUNG_EXIT_STATUS = 70
# How long a task's thread may run on past its hard limit before its process exits: a tenth of
# the limit, between 1 and 30 seconds (a model reply or a sandboxed command usually ends by then).
HARD_GRACE_SECONDS = 30.0


def hard_grace(hard: float) -> float:
    return min(HARD_GRACE_SECONDS, max(1.0, hard / 10))


class SoftLimitReached(SoftTimeLimitExceeded):
    """The task ran past its soft time limit; the message is the failure reason a person reads."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "the task hit its soft time limit"


class TimeLimits:
    """A watcher thread for one task; use as a context manager around the run, in the task's thread."""

    def __init__(self, *, soft: float, hard: float, task_id: int, on_hard: Callable[[str], None],
                 grace: float | None = None, exit_process: Callable[[int], None] = os._exit) -> None:
        self.soft, self.hard = soft, max(hard, soft)
        self.task_id = task_id
        self.on_hard = on_hard
        self.grace = hard_grace(self.hard) if grace is None else grace
        self.exit_process = exit_process
        self.reason: str | None = None
        self._done = threading.Event()
        self._task_thread = threading.current_thread()
        self._watcher = threading.Thread(target=self._watch, name=f"time-limits-{task_id}", daemon=True)

    def __enter__(self) -> Self:
        self._task_thread = threading.current_thread()
        self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._watcher.join(timeout=5)

    def check(self) -> None:
        """Raise SoftLimitReached once the soft limit has passed: call it at every step of the run."""
        if self.reason is not None:
            raise SoftLimitReached(self.reason)

    def _watch(self) -> None:
        if self._done.wait(self.soft):
            return
        self.reason = (f"the task hit its soft time limit of {self.soft:.0f}s for this specialty "
                       "(soft_time_limit) and was stopped at its next step")
        log.warning("task %s: %s", self.task_id, self.reason)
        if self._done.wait(self.hard - self.soft):
            return
        reason = (f"the task hit its hard time limit of {self.hard:.0f}s for this specialty (time_limit) "
                  "and was failed while still running")
        log.error("task %s: %s", self.task_id, reason)
        try:
            self.on_hard(reason)
        except Exception:  # the exit below still frees the worker; the lease reaper fails the task then
            log.exception("task %s: could not record the hard time limit", self.task_id)
        if self._done.wait(self.grace) or not self._task_thread.is_alive():
            return
        log.critical("task %s: its thread is still running %.0fs after the hard time limit; exiting this "
                     "worker process so its other tasks are redelivered and taken over by lease",
                     self.task_id, self.grace)
        for handler in logging.getLogger().handlers:
            handler.flush()
        self.exit_process(HUNG_EXIT_STATUS)


def fail_overrun(db: Database, held: Claim, reason: str) -> None:
    """Fail the task and release its lease, if this claim still holds it; the hung run then writes nothing."""
    try:
        with db.session() as session:
            row = load_fenced(session, held)
            row.failure_reason = reason[:4000]
            transition(session, row, TaskState.FAILED, actor=held.owner, detail=reason[:1000])
            release(row)
    except LeaseLost as exc:
        log.info("task %s: not failed for its time limit, no longer ours: %s", held.task_id, exc)
