"""One retry helper for transient calls (GitHub, Anthropic, the database, the broker)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; `retry_on` must be explicit, `never` wins over it."""

    retry_on: tuple[type[BaseException], ...]
    never: tuple[type[BaseException], ...] = ()
    attempts: int = 4
    base_delay: float = 1.0
    max_delay: float = 30.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    what: str,
    delay_hint: Callable[[BaseException], float | None] = lambda exc: None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `fn`, retrying transient errors; `delay_hint` can honour a server's retry-after."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except policy.never:
            raise
        except policy.retry_on as exc:
            if attempt == policy.attempts:
                raise
            hinted = delay_hint(exc)
            wait = policy.delay(attempt) if hinted is None else min(hinted, policy.max_delay)
            log.warning("%s failed (%s: %s); retry %d/%d in %.1fs", what, type(exc).__name__, exc,
                        attempt, policy.attempts - 1, wait)
            sleep(wait)
    raise AssertionError("unreachable")
