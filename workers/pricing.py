"""What a model call cost, so runs can be budgeted in dollars and not only in tokens."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.llm import Usage

PER_MILLION = 1_000_000


@dataclass(frozen=True)
class Price:
    """USD per million tokens; cache_write is the 5-minute (ephemeral) rate."""

    input: float
    output: float
    cache_write: float
    cache_read: float


_OPUS_OLD = Price(15.00, 75.00, 18.75, 1.50)
_OPUS_NEW = Price(5.00, 25.00, 6.25, 0.50)
_SONNET = Price(3.00, 15.00, 3.75, 0.30)
_SONNET_5 = Price(2.00, 10.00, 2.50, 0.20)
_FABLE = Price(10.00, 50.00, 12.50, 1.00)

# Source: platform.claude.com "Pricing" and model overview pages (checked 2026-11).
# Claude Haiku 5.5 is billed in prompt-length bands, so it is left out (cost None).
PRICES: dict[str, Price] = {
    "claude-3-haiku": Price(0.25, 1.25, 0.30, 0.03),
    "claude-3-opus": _OPUS_OLD,
    "claude-3-5-haiku": Price(0.80, 4.00, 1.00, 0.08),
    "claude-3-5-sonnet": _SONNET,
    "claude-3-7-sonnet": _SONNET,
    "claude-haiku-4-5": Price(1.00, 5.00, 1.25, 0.10),
    "claude-sonnet-4": _SONNET,
    "claude-sonnet-4-0": _SONNET,
    "claude-sonnet-4-5": _SONNET,
    "claude-sonnet-4-6": _SONNET,
    "claude-opus-4": _OPUS_OLD,
    "claude-opus-4-0": _OPUS_OLD,
    "claude-opus-4-1": _OPUS_OLD,
    "claude-opus-4-5": _OPUS_NEW,
    "claude-opus-4-6": _OPUS_NEW,
    "claude-opus-4-7": _OPUS_NEW,
    "claude-opus-4-8": _OPUS_NEW,
    "claude-opus-5": _OPUS_NEW,
    "claude-opus-5-5": Price(4.00, 20.00, 5.00, 0.20),
    "claude-sonnet-5": _SONNET_5,
    "claude-sonnet-5-5": Price(2.00, 10.00, 2.50, 0.10),  # cache read cut to 0.05x on 2026-10-07
    "claude-fable-5": _FABLE,
    "claude-mythos-5": _FABLE,
    "claude-fable-5-1": Price(10.00, 50.00, 12.50, 0.25),
    "claude-mythos-5-1": Price(10.00, 50.00, 12.50, 0.25),
}

# What may follow a known name: a snapshot date, "latest", a cloud version tag, "[1m]".
_SUFFIX = re.compile(r"(?:[-@](?:\d{8}|latest|v\d+(?::\d+)?))*(?:\[1m\])?")


def _normalise(model: str) -> str:
    """Drop cloud prefixes such as `us.anthropic.` so Bedrock names price like API names."""
    name = model.strip().lower()
    return name.rsplit("anthropic.", 1)[-1] if "anthropic." in name else name


def price_for(model: str) -> Price | None:
    """The price of `model`, matching dated names (claude-sonnet-4-5-20250929) to their family."""
    name = _normalise(model)
    for known in sorted(PRICES, key=len, reverse=True):
        if name.startswith(known) and _SUFFIX.fullmatch(name[len(known):]):
            return PRICES[known]
    return None


def cost_usd(model: str, usage: Usage) -> float | None:
    """Dollars spent for `usage` on `model`; None when the model has no known price."""
    price = price_for(model)
    if price is None:
        return None
    total = (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_write_tokens * price.cache_write
        + usage.cache_read_tokens * price.cache_read
    )
    return total / PER_MILLION
