"""/api/v1/tasks: list, show, submit, retry, cancel. Writes go through coordinator.operations."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from sqlalchemy import Select, func, select
from sqlalchemy.orm import selectinload

from common.models import Task
from common.serialize import task_detail, task_summary
from common.states import TaskState
from coordinator.api.schemas import ErrorBody, TaskDetail, TaskPage, TaskSummary
from coordinator.services import Services
from coordinator.webhooks.endpoint import get_services

api = APIRouter(prefix="/tasks", tags=["tasks"])
ServicesDep = Annotated[Services, Depends(get_services)]
NOT_FOUND = {404: {"model": ErrorBody, "description": "No task has this id."}}
MAX_PAGE = 500


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
    repo: Annotated[str | None, Query(description="Only this owner/name.")] = None,
    specialty: Annotated[str | None, Query(description="Only this specialty (queue).")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Tasks per page.")] = 50,
    offset: Annotated[int, Query(ge=0, description="Tasks to skip (from next_offset).")] = 0,
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
def show_task(task_id: int, services: ServicesDep) -> dict[str, Any]:
    with services.db.session() as session:
        task = session.get(Task, task_id, options=[selectinload(Task.events), selectinload(Task.runs)])
        if task is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no task with id {task_id}")
        return task_detail(task)
