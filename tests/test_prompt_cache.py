"""Prompt caching counted as the Messages API counts it: the fake's cache rules, and where the agent puts breakpoints."""

from __future__ import annotations

import itertools
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.anthropic_server import DEFAULT_KEY, LOOKBACK_BLOCKS, PromptCache, minimum_cacheable_tokens
from workers.llm import request_params

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import tokens_bench  # noqa: E402

EPHEMERAL = {"type": "ephemeral"}
BIG = "x" * 5000  # about 1250 tokens: above the Sonnet minimum, below Haiku's


def _body(blocks: list[dict[str, Any]], *, model: str = "claude-sonnet-4-6", system: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": blocks}]}
    if system:
        body["system"] = [{"type": "text", "text": system, "cache_control": EPHEMERAL}]
    return body


def _texts(count: int, *, mark: int | None = None, first: str = BIG) -> list[dict[str, Any]]:
    blocks = [{"type": "text", "text": first if i == 0 else f"block {i}"} for i in range(count)]
    if mark is not None:
        blocks[mark] = {**blocks[mark], "cache_control": EPHEMERAL}
    return blocks


def test_a_prefix_is_written_once_then_read() -> None:
    cache = PromptCache()
    first = cache.usage(_body(_texts(2, mark=1)))
    second = cache.usage(_body(_texts(2, mark=1)))
    assert first["cache_creation_input_tokens"] > 1024 and first["cache_read_input_tokens"] == 0
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    assert second["cache_creation_input_tokens"] == 0


def test_prefixes_below_the_model_minimum_are_neither_written_nor_read() -> None:
    cache = PromptCache()
    short = _body(_texts(2, mark=1, first="short"))
    assert cache.usage(short)["cache_creation_input_tokens"] == 0
    assert cache.usage(short)["cache_read_input_tokens"] == 0
    haiku = _body(_texts(2, mark=1), model="claude-haiku-4-5")
    assert minimum_cacheable_tokens("claude-haiku-4-5") == 2048 and minimum_cacheable_tokens("claude-opus-4-1") == 1024
    assert cache.usage(haiku)["cache_creation_input_tokens"] == 0  # 1250 tokens: enough for Sonnet only


def test_a_changed_byte_anywhere_in_the_prefix_misses() -> None:
    cache = PromptCache()
    cache.usage(_body(_texts(3, mark=2)))
    changed = _texts(3, mark=2)
    changed[1]["text"] = "block 1 "
    assert cache.usage(_body(changed))["cache_read_input_tokens"] == 0
    reordered = [{"text": b["text"], "type": "text", **({"cache_control": EPHEMERAL} if "cache_control" in b else {})}
                 for b in _texts(3, mark=2)]
    assert cache.usage(_body(reordered))["cache_read_input_tokens"] == 0  # same meaning, other bytes


def test_a_moving_breakpoint_reads_an_entry_at_most_20_blocks_back() -> None:
    cache = PromptCache()
    cache.usage(_body(_texts(2, mark=1)))
    near = cache.usage(_body(_texts(1 + LOOKBACK_BLOCKS, mark=LOOKBACK_BLOCKS)))  # 19 blocks after the entry
    assert near["cache_read_input_tokens"] > 1024
    fresh = PromptCache()
    fresh.usage(_body(_texts(2, mark=1)))
    far = fresh.usage(_body(_texts(2 + LOOKBACK_BLOCKS, mark=1 + LOOKBACK_BLOCKS)))  # 20 blocks after it
    assert far["cache_read_input_tokens"] == 0 and far["cache_creation_input_tokens"] > 1024


def test_every_breakpoint_is_looked_up_and_entries_expire() -> None:
    now = [0.0]
    cache = PromptCache(clock=lambda: now[0])
    cache.usage(_body(_texts(2, mark=1)))
    blocks = _texts(40, mark=39)
    blocks[1] = {**blocks[1], "cache_control": EPHEMERAL}  # an earlier breakpoint finds the old entry
    assert cache.usage(_body(blocks))["cache_read_input_tokens"] > 1024
    now[0] = 301.0
    assert cache.usage(_body(_texts(2, mark=1)))["cache_read_input_tokens"] == 0


def _breakpoints(body: dict[str, Any]) -> list[tuple[int, Any]]:
    """Every block in cached-prefix order (tools, system, messages) with its index, marked ones only."""
    blocks = [*body.get("tools", []), *body.get("system", [])]
    for message in body["messages"]:
        content = message["content"]
        blocks.extend([{"type": "text", "text": content}] if isinstance(content, str) else content)
    return [(i, b) for i, b in enumerate(blocks) if "cache_control" in b]


def _prefix_blocks(body: dict[str, Any]) -> list[str]:
    blocks = [*body.get("tools", []), *body.get("system", [])]
    for message in body["messages"]:
        content = message["content"]
        blocks.extend({"role": message["role"], **b} for b in
                      ([{"type": "text", "text": content}] if isinstance(content, str) else content))
    return [json.dumps({k: v for k, v in b.items() if k != "cache_control"}) for b in blocks]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return tokens_bench.session(tmp_path_factory.mktemp("tokens"))


def test_a_ten_turn_session_is_served_mostly_from_the_cache(session: dict[str, Any]) -> None:
    assert session["requests"] == tokens_bench.TURNS
    assert session["share"] >= tokens_bench.TARGET, session


def test_each_request_repeats_the_previous_prefix_byte_for_byte_with_at_most_4_breakpoints(
        session: dict[str, Any]) -> None:
    bodies = session["bodies"]
    for before, after in itertools.pairwise(bodies):
        assert len(_breakpoints(after)) <= 4
        last = _breakpoints(before)[-1][0]
        assert _prefix_blocks(after)[:last + 1] == _prefix_blocks(before)[:last + 1]
        assert last in [index for index, _ in _breakpoints(after)], "the previous write point is looked up exactly"
        assert after["tools"] == before["tools"] and after["system"] == before["system"]


def test_nothing_secret_or_volatile_in_the_cached_prefix(session: dict[str, Any]) -> None:
    stamp = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}|\b\d{10}(\.\d+)?\b")
    for body in session["bodies"]:
        cached = json.dumps([body.get("tools"), body.get("system"), body["messages"]])
        assert DEFAULT_KEY not in cached and "sk-ant-" not in cached
        assert not stamp.search(cached), stamp.search(cached)


def test_request_params_never_exceed_4_breakpoints() -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "task"}]
    for turn in range(6):
        messages += [{"role": "assistant", "content": [{"type": "text", "text": f"turn {turn}"}]},
                     {"role": "user", "content": [{"type": "text", "text": f"result {turn}"}]}]
    params = request_params(system="rules", tools=[{"name": "t", "input_schema": {"type": "object"}}],
                            messages=messages)
    assert len(_breakpoints(params)) == 4
    assert [i for i, _ in _breakpoints(params)][-2:] == [len(_prefix_blocks(params)) - 3,
                                                         len(_prefix_blocks(params)) - 1]
