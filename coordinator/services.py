"""The coordinator's long-lived parts, built once from settings and handed to requests."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery

from common.celery_app import make_celery
from common.db import Database
from common.settings import Settings
from coordinator.admission import Scheduler
from coordinator.dispatch import Dispatcher
from coordinator.reconciler import Reconciler
from coordinator.sender import Sender
from coordinator.triage_runner import TriageRunner
from coordinator.webhooks import checks, comments, followups, issues, lifecycle, ping
from coordinator.webhooks.router import Router


@dataclass
class Services:
    settings: Settings
    db: Database
    celery: Celery
    dispatcher: Dispatcher
    reconciler: Reconciler
    router: Router
    sender: Sender
    scheduler: Scheduler
    triage: TriageRunner  # LLM triage of pending tasks, after the delivery's commit


def webhook_router() -> Router:
    """Every webhook concern, combined in one place."""
    router = Router()
    for module in (ping, issues, lifecycle, comments, followups, checks):
        router.include(module.router)
    return router


def build_services(settings: Settings) -> Services:
    db = Database(settings)
    celery = make_celery(settings)
    dispatcher = Dispatcher(db, celery)
    return Services(settings, db, celery, dispatcher, Reconciler(db, dispatcher), webhook_router(), Sender(dispatcher),
                    Scheduler(db, dispatcher), triage=TriageRunner(db, dispatcher))
