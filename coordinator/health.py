"""Liveness and readiness: /healthz says the process is up, /readyz that it can do its job."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import text

from coordinator.services import Services
from coordinator.webhooks.endpoint import get_services

api = APIRouter()


@api.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check_database(services: Services) -> str:
    try:
        with services.db.session() as session:
            session.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:  # readiness reports any failure; it must not raise
        return f"error: {type(exc).__name__}: {exc}".splitlines()[0]


def _check_broker(services: Services) -> str:
    try:
        with services.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=services.settings.dispatch_timeout_seconds)
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}".splitlines()[0]


@api.get("/readyz")
async def readyz(services: Annotated[Services, Depends(get_services)]) -> JSONResponse:
    checks = {
        "database": await run_in_threadpool(_check_database, services),
        "broker": await run_in_threadpool(_check_broker, services),
    }
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)
