"""Handlers registered per (event, action); each concern lives in its own module."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from common.settings import Settings


@dataclass
class Delivery:
    """One verified, parsed delivery, with the session of its transaction."""

    settings: Settings
    session: Session
    delivery_id: str
    event: str
    action: str | None
    payload: dict[str, Any]

    @property
    def repo(self) -> str | None:
        return (self.payload.get("repository") or {}).get("full_name")

    @property
    def sender(self) -> dict[str, Any]:
        return self.payload.get("sender") or {}


@dataclass
class Outcome:
    """What a delivery led to; `description` is stored on the delivery row."""

    description: str
    task_id: int | None = None
    dispatch: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[Delivery], Outcome]


class Router:
    def __init__(self) -> None:
        self._handlers: dict[tuple[str, str | None], Handler] = {}

    def on(self, event: str, *actions: str) -> Callable[[Handler], Handler]:
        """Register a handler for `event` and each of `actions` (none = any action)."""

        def register(handler: Handler) -> Handler:
            for action in actions or (None,):
                self._handlers[(event, action)] = handler
            return handler

        return register

    def include(self, other: Router) -> None:
        self._handlers.update(other._handlers)

    def dispatch(self, delivery: Delivery) -> Outcome:
        handler = self._handlers.get((delivery.event, delivery.action)) or self._handlers.get(
            (delivery.event, None)
        )
        if handler is None:
            what = delivery.event + (f".{delivery.action}" if delivery.action else "")
            return Outcome(f"ignored: {what} is not handled")
        return handler(delivery)
