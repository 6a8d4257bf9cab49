"""Limits on one agent run; crossing one ends the run with the reason recorded."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from common.errors import ForgecrewError


class BudgetExhausted(ForgecrewError):
    """A run hit one of its limits; the message names the limit and the setting to raise."""


@dataclass
class Budget:
    max_turns: int
    max_output_tokens: int
    max_wall_seconds: float
    max_cost_usd: float
    turns: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def check(self) -> None:
        """Raise BudgetExhausted before a model call that would go past a limit."""
        if self.turns >= self.max_turns:
            raise BudgetExhausted(f"turn budget exhausted: {self.turns} model calls "
                                  f"(FORGECREW_MAX_TURNS={self.max_turns})")
        self.check_output()
        if self.elapsed() >= self.max_wall_seconds:
            raise BudgetExhausted(f"time budget exhausted: {self.elapsed():.0f}s "
                                  f"(FORGECREW_MAX_WALL_SECONDS={self.max_wall_seconds:.0f})")
        if self.cost_usd >= self.max_cost_usd:
            raise BudgetExhausted(f"cost budget exhausted: ${self.cost_usd:.2f} "
                                  f"(FORGECREW_MAX_COST_USD={self.max_cost_usd:.2f})")

    def check_output(self) -> None:
        """Raise BudgetExhausted once the run's output tokens are spent (a reply cut short by it too)."""
        if self.output_tokens >= self.max_output_tokens:
            raise BudgetExhausted(f"output token budget exhausted: {self.output_tokens} tokens "
                                  f"(FORGECREW_MAX_OUTPUT_TOKENS={self.max_output_tokens})")

    def time_left(self) -> float:
        """Seconds of wall time the run has left, so one tool call cannot outlast the run's budget."""
        return max(0.0, self.max_wall_seconds - self.elapsed())

    def spend(self, *, output_tokens: int, cost_usd: float | None) -> None:
        self.turns += 1
        self.output_tokens += output_tokens
        self.cost_usd += cost_usd or 0.0

    def tokens_left(self, per_call: int) -> int:
        return max(1, min(per_call, self.max_output_tokens - self.output_tokens))
