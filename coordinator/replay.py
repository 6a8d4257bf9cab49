"""Run a stored webhook delivery through intake again, e.g. after fixing the setting that ignored it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from common.errors import DeliveryNotFound, InvalidRequest
from common.models import WebhookDelivery
from coordinator.services import Services
from coordinator.webhooks.endpoint import process_delivery

# Replays of one delivery racing each other take the next number; give up after this many clashes.
ATTEMPTS = 5


def replay_delivery(services: Services, delivery_id: str) -> dict[str, Any]:
    """Feed the stored payload to the same path a new delivery takes, as `<id>-replay-<n>`.

    The original row stays as it was; the replay is a delivery of its own with its own outcome,
    so the audit keeps both. Signature checks are skipped: the payload was verified when it came.
    """
    event, body, taken = _stored(services, delivery_id)
    for number in range(taken + 1, taken + 1 + ATTEMPTS):
        new_id = f"{delivery_id}-replay-{number}"
        answer = process_delivery(services, {"x-github-event": event, "x-github-delivery": new_id}, body)
        if answer.body.get("status") == "duplicate":
            continue  # another replay took this number first
        if answer.triage_id is not None:  # LLM triage: classified and sent now (no runner thread here)
            services.triage.classify(answer.triage_id)
        elif answer.dispatch_task_id is not None:
            services.dispatcher.dispatch(answer.dispatch_task_id, actor=f"replay:{new_id}")
        return {"replay_of": delivery_id, "delivery": new_id, "event": event, "http_status": answer.status,
                "outcome": answer.body.get("status") or answer.body.get("error"),
                "task_id": answer.body.get("task_id")}
    raise InvalidRequest(f"delivery {delivery_id} is being replayed by others right now; try again")


def _stored(services: Services, delivery_id: str) -> tuple[str, bytes, int]:
    """The delivery's event and body, and how many replays of it exist."""
    with services.db.session() as session:
        row = session.scalar(select(WebhookDelivery).where(WebhookDelivery.delivery_id == delivery_id))
        if row is None:
            raise DeliveryNotFound(delivery_id)
        if row.payload is None:
            raise InvalidRequest(f"delivery {delivery_id} has no stored payload (it came before payloads were "
                                 "kept, or its body was not JSON); redeliver it from the webhook's page on GitHub")
        prefix = f"{delivery_id}-replay-"
        taken = session.scalar(select(func.count()).select_from(WebhookDelivery)
                               .where(WebhookDelivery.delivery_id.startswith(prefix, autoescape=True))) or 0
        return row.event, row.payload.encode(), taken
