"""The coordinator's FastAPI app, built from settings (nothing is read at import time)."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from common.settings import Settings
from coordinator import health
from coordinator.services import build_services
from coordinator.webhooks import endpoint

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, run_reconciler: bool = True) -> FastAPI:
    """Refuses to build without a webhook secret: unsigned intake would let anyone start agents."""
    settings.require("webhook_secret", purpose="the coordinator verifies every GitHub webhook with it")
    if not settings.repo_allowlist:
        log.warning("FORGECREW_REPO_ALLOWLIST is empty: every webhook will be ignored")
    services = build_services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = None
        if run_reconciler:
            thread = threading.Thread(target=services.reconciler.loop, args=(stop,), name="reconciler",
                                      daemon=True)
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread:
                thread.join(timeout=10)
            services.db.dispose()

    app = FastAPI(title="forgecrew coordinator", version="0.1.0", lifespan=lifespan)
    app.state.services = services
    app.include_router(endpoint.api)
    app.include_router(health.api)
    return app
