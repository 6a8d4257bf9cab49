"""/api/v1/agents: the workers online, what they consume and run, and when they last beat."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from coordinator.agents import WorkerSeen, WorkerWatcher, inspect_active, inspect_queues
from coordinator.api.schemas import AgentList
from coordinator.dispatch import BROKER_ERRORS
from coordinator.services import Services
from coordinator.webhooks.endpoint import get_services

api = APIRouter(prefix="/agents", tags=["agents"])


def get_watcher(request: Request) -> WorkerWatcher:
    return request.app.state.worker_watcher


@api.get("", response_model=AgentList, summary="Celery workers: online, queues, active tasks, last heartbeat")
async def list_agents(
    services: Annotated[Services, Depends(get_services)],
    watcher: Annotated[WorkerWatcher, Depends(get_watcher)],
    inspect: Annotated[bool, Query(description="Ask the workers for their queues and tasks (waits for "
                                               "replies); false answers from heartbeats alone.")] = True,
    timeout: Annotated[float, Query(gt=0, le=10, description="Seconds to wait for inspect replies.")] = 1.0,
) -> dict[str, Any]:
    seen = {worker.hostname: worker for worker in watcher.workers()}
    queues: dict[str, list[str]] = {}
    active: dict[str, list[dict[str, Any]]] = {}
    if inspect:
        # both broadcasts at once, in threads: each blocks until replies or the timeout
        expected = sum(1 for worker in seen.values() if worker.alive()) or None
        try:
            queues, active = await asyncio.gather(
                run_in_threadpool(inspect_queues, services.celery, timeout=timeout, expected=expected),
                run_in_threadpool(inspect_active, services.celery, timeout=timeout, expected=expected))
        except BROKER_ERRORS:
            queues, active = {}, {}  # heartbeats still answer; a broker outage shows on /readyz
    agents = [_agent(host, seen.get(host), queues, active) for host in sorted({*seen, *queues, *active})]
    return {"agents": agents, "online": sum(1 for agent in agents if agent["online"]), "inspected": inspect}


def _agent(host: str, seen: WorkerSeen | None, queues: dict[str, list[str]],
           active: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    replied = host in queues or host in active
    running = [_active_task(task) for task in active[host]] if host in active else None
    return {
        "hostname": host,
        "online": replied or bool(seen and seen.alive(time.time())),
        "last_heartbeat": datetime.fromtimestamp(seen.last_heartbeat, UTC) if seen else None,
        "queues": queues.get(host) if replied else None,
        "active": running,
        "active_count": len(running) if running is not None else (seen.active if seen else 0),
        "processed": seen.processed if seen else 0,
        "loadavg": list(seen.loadavg) if seen else [],
        "version": seen.sw_ver if seen else "",
    }


def _active_task(task: dict[str, Any]) -> dict[str, Any]:
    kwargs = task.get("kwargs") if isinstance(task.get("kwargs"), dict) else {}
    task_id = kwargs.get("task_id")
    started = task.get("time_start")
    return {
        "task_id": task_id if isinstance(task_id, int) else None,
        "message_id": str(task.get("id", "")),
        "started_at": datetime.fromtimestamp(started, UTC) if isinstance(started, (int, float)) else None,
    }
