"""GitHub's `ping`, sent when a webhook is created."""

from __future__ import annotations

from coordinator.webhooks.router import Delivery, Outcome, Router

router = Router()


@router.on("ping")
def on_ping(delivery: Delivery) -> Outcome:
    hook_id = delivery.payload.get("hook_id")
    return Outcome(f"pong (hook {hook_id})")
