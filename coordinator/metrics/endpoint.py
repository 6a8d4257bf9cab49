"""GET /metrics in Prometheus text format; bearer FORGECREW_METRICS_TOKEN when that is set."""

from __future__ import annotations

from typing import Annotated

from celery import Celery
from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from common.db import Database
from coordinator.agents import WorkerWatcher
from coordinator.api.auth import check_bearer
from coordinator.metrics.collector import ForgecrewCollector

api = APIRouter()
metrics_bearer = HTTPBearer(auto_error=False, scheme_name="metricsBearer",
                            description="FORGECREW_METRICS_TOKEN; /metrics is open while it is unset.")


def make_registry(db: Database, celery: Celery, watcher: WorkerWatcher) -> CollectorRegistry:
    """A registry of this app's own (not prometheus_client's global one), read at each scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ForgecrewCollector(db, celery, watcher))
    return registry


def require_metrics_token(request: Request,
                          credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(metrics_bearer)]) -> None:
    settings = request.app.state.services.settings
    if settings.is_set("metrics_token"):
        check_bearer(settings, "metrics_token", credentials)


@api.get("/metrics", tags=["metrics"], response_class=Response, dependencies=[Depends(require_metrics_token)],
         responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."},
                    401: {"description": "FORGECREW_METRICS_TOKEN is set and the bearer token is missing or wrong."}})
def metrics(request: Request) -> Response:
    """Figures read at scrape time from the database, the broker and worker heartbeats."""
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
