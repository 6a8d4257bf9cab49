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


def sent_by_bot(sender: dict[str, Any]) -> bool:
    """Some Apps' events carry sender.type User; the [bot] suffix still marks them."""
    return sender.get("type") == "Bot" or str(sender.get("login", "")).endswith("[bot]")


class Router:
    def __init__(self) -> None:
        self._handlers: dict[tuple[str, str | None], Handler] = {}
        self._bots_welcome: set[Handler] = set()

    def on(self, event: str, *actions: str, bots: bool = False) -> Callable[[Handler], Handler]:
        """Register a handler for `event` and each of `actions` (none = any action).

        Bots' deliveries are ignored unless `bots`: they must never start work, but a PR merged by
        a merge bot or an issue closed by a stale bot is still a fact a task has to follow.
        """

        def register(handler: Handler) -> Handler:
            for action in actions or (None,):
                self._handlers[(event, action)] = handler
            if bots:
                self._bots_welcome.add(handler)
            return handler

        return register

    def include(self, other: Router) -> None:
        self._handlers.update(other._handlers)
        self._bots_welcome.update(other._bots_welcome)

    def dispatch(self, delivery: Delivery) -> Outcome:
        handler = self._handlers.get((delivery.event, delivery.action)) or self._handlers.get(
            (delivery.event, None)
        )
        if sent_by_bot(delivery.sender) and handler not in self._bots_welcome:
            return Outcome(f"ignored: sent by bot {delivery.sender.get('login')}")
        if handler is None:
            what = delivery.event + (f".{delivery.action}" if delivery.action else "")
            return Outcome(f"ignored: {what} is not handled")
        return handler(delivery)
