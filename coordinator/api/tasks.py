"""/api/v1/tasks: list, show, submit, retry, cancel. Writes go through coordinator.operations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, status
from sqlalchemy import Select, func, select
from sqlalchemy.orm import selectinload

from common.errors import IllegalTransition, InvalidRequest, SettingsError, TaskConflict, TaskNotFound
from common.forge.base import ForgeError
from common.models import Task
from common.serialize import task_detail, task_summary
from common.states import TaskState
from coordinator.api.auth import Actor
from coordinator.api.schemas import MAX_ID, NO_NUL, CancelRequest, ErrorBody, SubmitRequest, TaskDetail, TaskPage
from coordinator.operations import Operations
from coordinator.services import Services
from coordinator.webhooks.endpoint import get_services

api = APIRouter(prefix="/tasks", tags=["tasks"])
ServicesDep = Annotated[Services, Depends(get_services)]
NOT_FOUND = {404: {"model": ErrorBody, "description": "No task has this id."}}
CONFLICT = {409: {"model": ErrorBody, "description": "The task's state does not allow this."}}
# FastAPI answers 400 itself for a body that is no UTF-8 text (invalid JSON text is a 422)
UNREADABLE = {400: {"model": ErrorBody, "description": "The body is not UTF-8 text."}}
BAD_INPUT = {400: {"model": ErrorBody, "description": "The request names no usable work (e.g. an unknown "
                   "specialty), or its body is not UTF-8 text."},
             502: {"model": ErrorBody, "description": "The forge would not give the issue."}}
MAX_PAGE = 500
TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="The task's id.")]


def _filtered(query: Select[Any], state: TaskState | None, repo: str | None, specialty: str | None) -> Select[Any]:
    for column, value in ((Task.state, state.value if state else None), (Task.repo, repo),
                          (Task.specialty, specialty)):
        if value:
            query = query.where(column == value)
    return query


@api.get("", response_model=TaskPage, summary="List tasks, newest first")
def list_tasks(
    services: ServicesDep,
    state: Annotated[TaskState | None, Query(description="Only tasks in this state.")] = None,
    repo: Annotated[str | None, Query(pattern=NO_NUL, description="Only this owner/name.")] = None,
    specialty: Annotated[str | None, Query(pattern=NO_NUL, description="Only this specialty (queue).")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Tasks per page.")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID, description="Tasks to skip (from next_offset).")] = 0,
) -> dict[str, Any]:
    with services.db.session() as session:
        total = session.scalar(_filtered(select(func.count()).select_from(Task), state, repo, specialty)) or 0
        rows = session.scalars(
            _filtered(select(Task), state, repo, specialty).order_by(Task.id.desc()).limit(limit).offset(offset))
        items = [task_summary(task) for task in rows]
    following = offset + len(items)
    return {"items": items, "total": total, "limit": limit, "offset": offset,
            "next_offset": following if following < total and items else None}


@api.get("/{task_id}", response_model=TaskDetail, responses=NOT_FOUND, summary="One task with its audit log")
def show_task(task_id: TaskId, services: ServicesDep) -> dict[str, Any]:
    with services.db.session() as session:
        task = session.get(Task, task_id, options=[selectinload(Task.events), selectinload(Task.runs),
                                                   selectinload(Task.steps)])
        if task is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no task with id {task_id}")
        return task_detail(task)


def get_operations(services: ServicesDep) -> Operations:
    """The one layer that changes tasks, shared with the CLI (cheap to build per request)."""
    return Operations(services.db, services.dispatcher, services.celery)


OperationsDep = Annotated[Operations, Depends(get_operations)]


@contextmanager
def _answering() -> Iterator[None]:
    """Turn the operations' refusals into HTTP answers that carry their messages."""
    try:
        yield
    except TaskNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None
    except (TaskConflict, IllegalTransition) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
    except InvalidRequest as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from None
    except ForgeError as exc:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, detail=f"the forge refused: {exc}") from None
    except SettingsError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc)) from None


@api.post("", response_model=TaskDetail, status_code=status.HTTP_201_CREATED, responses={**BAD_INPUT, **CONFLICT},
          summary="Start work without a webhook")
def submit_task(request: Annotated[SubmitRequest, Body()], operations: OperationsDep, actor: Actor) -> dict[str, Any]:
    """Creates the task (triaged unless `specialty` is given) and sends it to its queue."""
    with _answering():
        return operations.submit(repo=request.repo, issue=request.issue, title=request.title, body=request.body,
                                 specialty=request.specialty, requested_by=_who(actor, request.requested_by))


@api.post("/{task_id}/retry", response_model=TaskDetail, responses={**NOT_FOUND, **CONFLICT},
          summary="Queue a failed or cancelled task again")
def retry_task(task_id: TaskId, operations: OperationsDep, actor: Actor) -> dict[str, Any]:
    with _answering():
        return operations.retry(task_id, actor=actor)


@api.post("/{task_id}/cancel", response_model=TaskDetail, responses={**NOT_FOUND, **CONFLICT, **UNREADABLE},
          summary="Cancel a task that is not finished")
def cancel_task(task_id: TaskId, operations: OperationsDep, actor: Actor,
                request: Annotated[CancelRequest | None, Body()] = None) -> dict[str, Any]:
    """A running worker notices at its next step and stops; queued messages are revoked."""
    with _answering():
        return operations.cancel(task_id, actor=actor, reason=request.reason if request else "")


def _who(actor: str, named: str) -> str:
    """The audit log's requester: `api`, or `api:<name>` when the caller named who asked."""
    return actor if named == actor else f"{actor}:{named}"
