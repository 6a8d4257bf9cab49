"""Exception types shared across forgecrew; each message says what to do next."""

from __future__ import annotations


class ForgecrewError(Exception):
    """Base class for errors forgecrew raises on purpose."""


class SettingsError(ForgecrewError):
    """A setting is missing or malformed; the message names the variable."""


class IllegalTransition(ForgecrewError):
    """A task was asked to move between states the state machine does not connect."""

    def __init__(self, task_id: int, from_state: str, to_state: str) -> None:
        self.task_id = task_id
        self.from_state = from_state
        self.to_state = to_state
        super().__init__(f"task {task_id}: illegal state change {from_state} -> {to_state}")


class TaskNotFound(ForgecrewError):
    """No task has the id that was asked for."""

    def __init__(self, task_id: int) -> None:
        self.task_id = task_id
        super().__init__(f"no task with id {task_id}")


class LeaseLost(ForgecrewError):
    """This worker no longer holds the task's lease; it must stop touching the task."""


class TaskCancelled(LeaseLost):
    """Someone cancelled the task while this worker ran it: stop, write nothing, publish nothing."""


class TaskConflict(ForgecrewError):
    """The task (or its issue) is in a state that does not allow what was asked; the message says why."""

    def __init__(self, message: str, *, task_id: int | None = None, state: str | None = None) -> None:
        self.task_id = task_id
        self.state = state
        super().__init__(message)


class InvalidRequest(ForgecrewError, ValueError):
    """The request itself is wrong (unknown specialty, malformed repository name, nothing to do)."""


class DeliveryNotFound(ForgecrewError):
    """No stored webhook delivery has the id that was asked for."""

    def __init__(self, delivery_id: str) -> None:
        self.delivery_id = delivery_id
        super().__init__(f"no webhook delivery with id {delivery_id!r}")


class BrokerUnavailable(ForgecrewError):
    """The Celery broker could not be reached; the message names the error."""
