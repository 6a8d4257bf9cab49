"""The REST API under /api/v1; every route sits behind the bearer token of coordinator.api.auth."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from coordinator.api import agents, auth, tasks
from coordinator.api.schemas import ErrorBody

PREFIX = "/api/v1"


def api_router() -> APIRouter:
    """The API's routes, combined in one place."""
    router = APIRouter(prefix=PREFIX, dependencies=[Depends(auth.require_token)], responses={
        401: {"model": ErrorBody, "description": "Missing or wrong bearer token."},
        503: {"model": ErrorBody, "description": "FORGECREW_API_TOKEN is not set on the coordinator."},
    })
    router.include_router(tasks.api)
    router.include_router(agents.api)
    return router
