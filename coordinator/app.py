"""The coordinator's FastAPI app, built from settings (nothing is read at import time)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from common.forge.factory import make_forge
from common.settings import Settings
from coordinator import health
from coordinator.agents import WorkerWatcher
from coordinator.api import api_router
from coordinator.conversation.runner import CommandRunner
from coordinator.dependencies import DependencyChecks
from coordinator.followups.runner import FollowupRunner
from coordinator.given_up_notice import GiveUpNotices
from coordinator.overlap import OverlapChecks
from coordinator.metrics import endpoint as metrics
from coordinator.operations import Operations
from coordinator.queued_notice import QueuedNotices
from coordinator.services import Services, build_services
from coordinator.webhooks import endpoint
from coordinator.webhooks.group_commit import GroupCommit

log = logging.getLogger(__name__)


def require_webhook_secret(settings: Settings) -> None:
    """Unsigned intake would let anyone start agents; placeholders are refused when settings load."""
    settings.require("webhook_secret", purpose="the coordinator verifies every GitHub webhook with it")


def add_sweeps(services: Services) -> tuple[CommandRunner, FollowupRunner]:
    """The reconciler's repairs beyond resends and reaping; every process that runs it adds them."""
    settings = services.settings
    commands = CommandRunner(services.db, Operations(services.db, services.dispatcher, services.celery),
                             lambda installation_id: make_forge(settings, installation_id))
    services.reconciler.sweeps.append(commands.sweep)
    followups = FollowupRunner(services.db, services.dispatcher, lambda installation_id: make_forge(settings, installation_id),
                               permissions=commands.permissions)
    services.reconciler.sweeps.append(followups.sweep)
    services.reconciler.sweeps.append(QueuedNotices(services.db, lambda installation_id: make_forge(
        settings, installation_id)).sweep)
    services.reconciler.sweeps.append(GiveUpNotices(services.db, lambda installation_id: make_forge(
        settings, installation_id)).sweep)
    services.reconciler.sweeps.append(DependencyChecks(services.db, lambda installation_id: make_forge(
        settings, installation_id), services.scheduler.release).sweep)
    services.reconciler.sweeps.append(OverlapChecks(services.db, lambda installation_id: make_forge(
        settings, installation_id), services.scheduler.release).sweep)
    services.reconciler.sweeps.append(services.scheduler.sweep)
    services.reconciler.sweeps.append(services.triage.sweep)  # pending tasks a stopped coordinator never triaged
    return commands, followups


def create_app(settings: Settings, *, run_reconciler: bool = True) -> FastAPI:
    """Refuses to build without a webhook secret."""
    require_webhook_secret(settings)
    if settings.triage_llm:
        settings.require("anthropic_api_key", purpose="LLM triage (FORGECREW_TRIAGE_LLM) asks the Anthropic "
                         "Messages API (behind a proxy that adds its own key, any value will do)")
    if not settings.repo_allowlist:
        log.warning("FORGECREW_REPO_ALLOWLIST is empty: every webhook will be ignored")
    services = build_services(settings)
    commands, followups = add_sweeps(services)
    watcher = WorkerWatcher(services.celery)  # worker heartbeats, for /api/v1/agents and /metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = None
        if run_reconciler:
            thread = threading.Thread(target=services.reconciler.loop, args=(stop,), name="reconciler",
                                      daemon=True)
            thread.start()
            log.info("reconciler running in process %d", os.getpid())  # one process of a coordinator's N
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.stop()
            app.state.intake.stop()  # writes the deliveries already read; their answers still go out
            commands.stop()
            followups.stop()
            services.sender.stop()  # publishes what is queued; the reconciler resends what it cannot
            services.triage.stop()  # what it has not classified stays pending for the reconciler's sweep
            if thread:
                thread.join(timeout=10)
            services.db.dispose()

    app = FastAPI(title="forgecrew coordinator", version="0.1.0", lifespan=lifespan)
    app.state.services = services
    app.state.intake = GroupCommit(services)
    app.state.commands = commands
    app.state.followups = followups
    app.include_router(endpoint.api)
    app.include_router(health.api)
    app.state.worker_watcher = watcher
    app.state.metrics_registry = metrics.make_registry(services.db, services.celery, watcher)
    app.include_router(metrics.api)
    app.include_router(api_router())
    return app
