"""LLMClient through the real anthropic SDK against FakeAnthropic, a local Messages API."""

from __future__ import annotations

import copy
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fakes.anthropic_server import (
    DEFAULT_KEY,
    FakeAnthropic,
    dropped,
    error,
    format_sse,
    overloaded,
    rate_limited,
    render_message,
    replay_sse,
    stream_error,
    stream_events,
    text,
    tool_use,
)
from tests.support import FIXTURES
from workers.llm import LLMClient, ModelError, Usage
from workers.pricing import cost_usd, price_for

ANTHROPIC = FIXTURES / "anthropic" / "extracted"

SYSTEM = "You are a careful backend engineer."
TOOLS = [
    {"name": "read_file", "description": "Read a file of the workspace.",
     "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}},
    {"name": "run", "description": "Run a shell command.",
     "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}},
]
TOOL_ID = "toolu_01AbCdEfGhIjKlMnOpQrStUv"
ASK = [{"role": "user", "content": "Fix the failing test in tests/test_app.py."}]

MakeClient = Callable[..., LLMClient]


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_client(fake: FakeAnthropic, sleeps: list[float]) -> MakeClient:
    """LLMClient factory pointed at the fake, with no real waiting between retries."""

    def make(**options: Any) -> LLMClient:
        settings: dict[str, Any] = {"api_key": DEFAULT_KEY, "base_url": fake.base_url, "model": "claude-sonnet-4-6",
                                    "retry_base_delay": 0.0, "sleep": sleeps.append, "timeout": 10.0}
        return LLMClient(**{**settings, **options})

    return make


def ask(client: LLMClient, messages: list[dict[str, Any]] = ASK) -> Any:
    return client.create(system=SYSTEM, tools=TOOLS, messages=messages, max_tokens=1024)


def test_tool_use_round_trip_is_the_same_message_streamed_or_not(fake: FakeAnthropic, make_client: MakeClient) -> None:
    call = tool_use("read_file", {"path": "tests/test_app.py"}, text="Let me look.", id=TOOL_ID)
    fake.add(call, call, text("Fixed."))
    streamed, plain = ask(make_client(stream=True)), ask(make_client(stream=False))

    for reply in (streamed, plain):
        assert reply.message.stop_reason == "tool_use"
        assert [block.type for block in reply.message.content] == ["text", "tool_use"]
        assert reply.message.content[1].input == {"path": "tests/test_app.py"}
    assert [b.model_dump() for b in streamed.message.content] == [b.model_dump() for b in plain.message.content]
    assert fake.requests[0].body["stream"] is True and "stream" not in fake.requests[1].body

    history = [*ASK, {"role": "assistant", "content": streamed.message.content},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": TOOL_ID,
                                             "content": "def test_app(): assert 1 == 2"}]}]
    final = ask(make_client(), history)
    assert final.message.stop_reason == "end_turn" and final.message.content[0].text == "Fixed."


def test_usage_counts_cache_writes_then_reads_and_prices_them(fake: FakeAnthropic, make_client: MakeClient) -> None:
    fake.add(tool_use("run", {"command": "pytest -x"}), text("Done."))
    client = make_client()
    system = SYSTEM + " Read before you write." * 300  # above the 1024-token minimum the API caches
    first = client.create(system=system, tools=TOOLS, messages=ASK, max_tokens=1024)
    history = [*ASK, {"role": "assistant", "content": first.message.content},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": first.message.content[0].id,
                                             "content": "1 passed"}]}]
    second = client.create(system=system, tools=TOOLS, messages=history, max_tokens=1024)

    assert first.usage.cache_write_tokens > 0 and first.usage.cache_read_tokens == 0
    assert second.usage.cache_read_tokens >= first.usage.cache_write_tokens
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    assert first.model == "claude-sonnet-4-6"
    assert first.cost_usd == pytest.approx(cost_usd("claude-sonnet-4-6", first.usage))
    total = first.usage + second.usage
    assert total.cache_read_tokens == second.usage.cache_read_tokens
    assert total.output_tokens == first.usage.output_tokens + second.usage.output_tokens


def test_cache_breakpoints_on_system_last_tool_and_last_two_user_turns(fake: FakeAnthropic,
                                                                    make_client: MakeClient) -> None:
    fake.add(text("ok"))
    system = [{"type": "text", "text": "Shared rules."}, {"type": "text", "text": "Backend specialty."}]
    messages = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "noted"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    originals = copy.deepcopy((system, TOOLS, messages))
    make_client().create(system=system, tools=TOOLS, messages=messages, max_tokens=100)

    body = fake.requests[0].body
    assert (system, TOOLS, messages) == originals, "the caller's lists must not change"
    ephemeral = {"type": "ephemeral"}
    assert [b.get("cache_control") for b in body["system"]] == [None, ephemeral]
    assert [t.get("cache_control") for t in body["tools"]] == [None, ephemeral]
    assert body["messages"][0]["content"] == [{"type": "text", "text": "first", "cache_control": ephemeral}]
    assert [b.get("cache_control") for b in body["messages"][2]["content"]] == [None, ephemeral]


def test_string_system_and_string_user_content_become_cached_blocks(fake: FakeAnthropic,
                                                                     make_client: MakeClient) -> None:
    fake.add(text("ok"))
    ask(make_client())
    body = fake.requests[0].body
    assert body["system"] == [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    assert body["messages"][0]["content"] == [{"type": "text", "text": ASK[0]["content"],
                                               "cache_control": {"type": "ephemeral"}}]


def test_rate_limit_is_retried(fake: FakeAnthropic, make_client: MakeClient, sleeps: list[float]) -> None:
    fake.add(rate_limited(), text("ok"))
    reply = ask(make_client())
    assert reply.message.content[0].text == "ok"
    assert len(fake.message_requests) == 2 and len(sleeps) == 1


def test_retry_after_header_sets_the_wait(fake: FakeAnthropic, make_client: MakeClient, sleeps: list[float]) -> None:
    fake.add(rate_limited(retry_after=7), error(503, "api_error", "try later", {"retry-after": "0.25"}), text("ok"))
    ask(make_client())
    assert sleeps == [7.0, 0.25]


def test_overload_mid_stream_and_dropped_connection_are_retried(fake: FakeAnthropic, make_client: MakeClient,
                                                                sleeps: list[float]) -> None:
    fake.add(stream_error(), dropped(), text("ok"))
    assert ask(make_client(stream=True)).message.content[0].text == "ok"
    assert len(sleeps) == 2


def test_bad_request_is_not_retried(fake: FakeAnthropic, make_client: MakeClient, sleeps: list[float]) -> None:
    fake.add(error(400, "invalid_request_error", "max_tokens: 999999 > 64000, which is the maximum"))
    with pytest.raises(ModelError, match="max_tokens: 999999 > 64000") as caught:
        ask(make_client())
    assert (caught.value.status, caught.value.error_type) == (400, "invalid_request_error")
    assert caught.value.request_id and caught.value.request_id.startswith("req_")
    assert len(fake.message_requests) == 1 and sleeps == []


def test_unmatched_tool_result_gets_the_real_api_message(fake: FakeAnthropic, make_client: MakeClient) -> None:
    recorded = json.loads((ANTHROPIC / "error.400.invalid_request_error.json").read_text())["body"]["error"]["message"]
    orphan = [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01GHndag5wQmbzNihYmV2UBj",
                                           "content": "sunny"}]}]
    with pytest.raises(ModelError) as caught:
        ask(make_client(), orphan)
    assert recorded.replace("messages.0.content.1", "messages.0.content.0") in str(caught.value)
    assert fake.script == [] and len(fake.message_requests) == 1


def test_rejected_key_names_the_setting_and_never_shows_the_key(fake: FakeAnthropic, make_client: MakeClient,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-ant-api03-this-is-a-secret-key-42"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ModelError) as caught:
        ask(make_client(api_key=secret))
    message = str(caught.value)
    assert "FORGECREW_ANTHROPIC_API_KEY" in message and "401 authentication_error" in message
    assert caught.value.status == 401 and caught.value.error_type == "authentication_error"
    assert secret not in message and secret not in repr(caught.value) and secret not in caplog.text
    assert len(fake.message_requests) == 1


def test_overloaded_primary_falls_back_to_the_next_model(fake: FakeAnthropic, make_client: MakeClient) -> None:
    fake.add(overloaded(), overloaded(), text("from the fallback"))
    client = make_client(model="claude-opus-4-8", fallback_models=["claude-sonnet-4-6"], max_retries=1)
    reply = ask(client)
    assert reply.model == "claude-sonnet-4-6" and reply.message.content[0].text == "from the fallback"
    assert [r.body["model"] for r in fake.message_requests] == ["claude-opus-4-8"] * 2 + ["claude-sonnet-4-6"]


def test_every_model_overloaded_names_them_all(fake: FakeAnthropic, make_client: MakeClient) -> None:
    fake.add(*[overloaded()] * 4)
    client = make_client(model="claude-opus-4-8", fallback_models=["claude-sonnet-4-6"], max_retries=1)
    with pytest.raises(ModelError, match="overloaded for claude-opus-4-8, claude-sonnet-4-6") as caught:
        ask(client)
    assert (caught.value.status, caught.value.error_type) == (529, "overloaded_error")


def test_overload_inside_a_stream_also_falls_back(fake: FakeAnthropic, make_client: MakeClient) -> None:
    fake.add(stream_error(), text("ok"))
    reply = ask(make_client(fallback_models=["claude-haiku-4-5"], max_retries=0))
    assert reply.model == "claude-haiku-4-5"


@pytest.mark.parametrize(("status", "kind", "hint"), [
    (403, "permission_error", "denied access to claude-sonnet-4-6"),
    (404, "not_found_error", "check FORGECREW_MODEL"),
    (413, "request_too_large", "must be shorter"),
])
def test_other_refusals_end_the_run_with_a_hint(fake: FakeAnthropic, make_client: MakeClient, status: int,
                                                kind: str, hint: str) -> None:
    fake.add(error(status, kind, "refused"), text("unused"))
    with pytest.raises(ModelError, match=hint) as caught:
        ask(make_client(fallback_models=["claude-haiku-4-5"]))
    assert (caught.value.status, caught.value.error_type) == (status, kind) and len(fake.message_requests) == 1


def test_rate_limit_does_not_switch_models(fake: FakeAnthropic, make_client: MakeClient) -> None:
    fake.add(*[rate_limited()] * 2)
    client = make_client(fallback_models=["claude-haiku-4-5"], max_retries=1)
    with pytest.raises(ModelError, match="still failing .* after 2 attempts .*429 rate_limit_error"):
        ask(client)
    assert {r.body["model"] for r in fake.message_requests} == {"claude-sonnet-4-6"}


def test_server_gone_is_a_model_error_after_retries(fake: FakeAnthropic, make_client: MakeClient,
                                                    sleeps: list[float]) -> None:
    client = make_client(max_retries=2)
    fake.stop()
    with pytest.raises(ModelError, match="could not reach the Anthropic API at http://127.0.0.1.*3 attempts") as caught:
        ask(client)
    assert caught.value.status is None and caught.value.error_type == "connection_error" and len(sleeps) == 2
    assert "refused" in str(caught.value).lower()


def test_exhausted_script_fails_fast_with_a_clear_message(fake: FakeAnthropic, make_client: MakeClient) -> None:
    with pytest.raises(ModelError, match="no scripted reply left for request #1"):
        ask(make_client())
    assert len(fake.message_requests) == 1


def test_unknown_model_records_tokens_without_a_cost(fake: FakeAnthropic, make_client: MakeClient) -> None:
    fake.add(text("ok"))
    reply = ask(make_client(model="local-llama-70b"))
    assert reply.cost_usd is None
    assert reply.usage.input_tokens + reply.usage.cache_write_tokens > 0 and reply.usage.output_tokens > 0


def test_count_tokens_uses_the_same_request_shape(fake: FakeAnthropic, make_client: MakeClient) -> None:
    count = make_client().count_tokens(system=SYSTEM, tools=TOOLS, messages=ASK)
    assert count > 0 and fake.requests[0].path == "/v1/messages/count_tokens" and fake.script == []


def test_prices_match_dated_and_cloud_names() -> None:
    assert price_for("claude-sonnet-4-5-20250929") == price_for("claude-sonnet-4-5")
    assert price_for("claude-opus-4-20250514") == price_for("claude-opus-4-0")
    assert price_for("us.anthropic.claude-3-5-haiku-20241022-v1:0") == price_for("claude-3-5-haiku")
    assert price_for("claude-opus-4-9") is None and price_for("gpt-4o") is None
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000, cache_read_tokens=1_000_000,
                  cache_write_tokens=1_000_000)
    assert cost_usd("claude-haiku-4-5-20251001", usage) == pytest.approx(1.00 + 5.00 + 0.10 + 1.25)


def test_usage_from_api_treats_missing_as_zero() -> None:
    assert Usage.from_api({"input_tokens": 5, "cache_read_input_tokens": None}) == Usage(input_tokens=5)
    assert Usage.from_api(None) == Usage()


def test_recorded_stream_replays_through_the_sdk(fake: FakeAnthropic, make_client: MakeClient) -> None:
    fake.add(replay_sse((ANTHROPIC / "stream.tool_use.sse").read_text()))
    reply = ask(make_client(stream=True))
    block = reply.message.content[0]
    assert (block.type, block.name, block.input) == ("tool_use", "get_weather", {"location": "San Francisco, CA",
                                                                                  "units": "f"})
    assert reply.usage == Usage(input_tokens=656, output_tokens=74)


def test_generated_stream_has_the_recorded_shape() -> None:
    recorded = json.loads((ANTHROPIC / "stream.tool_use.events.json").read_text())
    usage = {"input_tokens": 656, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    message = render_message(tool_use("get_weather", {"location": "San Francisco, CA", "units": "f"}),
                             "claude-haiku-4-5-20251001", usage)
    generated = [{"event": name, "data": data} for name, data in stream_events(message)]

    def outline(events: list[dict[str, Any]]) -> list[tuple[str, tuple[str, ...]]]:
        """Event names and data keys, with runs of deltas collapsed to one."""
        shape = [(e["event"], tuple(sorted(e["data"]))) for e in events]
        return [item for i, item in enumerate(shape) if i == 0 or item != shape[i - 1]]

    assert outline(generated) == outline(recorded)
    for index in (0, 1):  # message_start.message and content_block_start.content_block
        key = "message" if index == 0 else "content_block"
        assert sorted(generated[index]["data"][key]) == sorted(recorded[index]["data"][key])
    assert sorted(generated[0]["data"]["message"]["usage"]) == sorted(recorded[0]["data"]["message"]["usage"])
    deltas = [e["data"]["delta"]["partial_json"] for e in generated if e["event"] == "content_block_delta"]
    assert deltas[0] == "" and len(deltas) > 2 and json.loads("".join(deltas)) == message["content"][0]["input"]
    assert format_sse(stream_events(message)).startswith("event: message_start\ndata: {")


def post(fake: FakeAnthropic, body: dict[str, Any], key: str | None = DEFAULT_KEY) -> tuple[int, dict[str, Any]]:
    headers = {"content-type": "application/json", **({"x-api-key": key} if key else {})}
    request = urllib.request.Request(f"{fake.base_url}/v1/messages", json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(("body", "key", "status", "message"), [
    ({"model": "m", "max_tokens": 5, "messages": ASK}, None, 401, "x-api-key header is required"),
    ({"model": "m", "max_tokens": 5, "messages": ASK}, "sk-wrong", 401, "invalid x-api-key"),
    ({"max_tokens": 5, "messages": ASK}, DEFAULT_KEY, 400, "model: Field required"),
    ({"model": "m", "messages": ASK}, DEFAULT_KEY, 400, "max_tokens: Field required"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "assistant", "content": "hi"}]}, DEFAULT_KEY, 400,
     'first message must use the "user" role'),
    ({"model": "m", "max_tokens": 5, "messages": ASK * 2}, DEFAULT_KEY, 400, "roles must alternate"),
    ({"model": "m", "max_tokens": 5, "messages": [
        *ASK, {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01x", "name": "run", "input": {}}]},
        {"role": "user", "content": "never mind"}]}, DEFAULT_KEY, 400,
     "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_01x"),
])
def test_fake_validates_like_the_api(fake: FakeAnthropic, body: dict[str, Any], key: str | None, status: int,
                                     message: str) -> None:
    fake.add(text("unused"))
    code, answer = post(fake, body, key)
    assert code == status and message in answer["error"]["message"]
    assert answer["type"] == "error" and answer["request_id"].startswith("req_011C")
    assert len(fake.script) == 1, "a refused request does not consume a scripted reply"


def test_scripted_callable_sees_the_request(fake: FakeAnthropic) -> None:
    fake.add(lambda request: text(f"you asked {request['model']}"))
    code, answer = post(fake, {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": ASK})
    assert code == 200 and answer["content"][0]["text"] == "you asked claude-haiku-4-5"
    assert answer["id"].startswith("msg_01") and answer["usage"]["cache_read_input_tokens"] == 0


def test_a_failing_scripted_callable_is_reported_not_hung_up(fake: FakeAnthropic, make_client: MakeClient) -> None:
    def broken(request: dict[str, Any]) -> Any:
        raise KeyError("oops")

    fake.add(broken)
    with pytest.raises(ModelError, match="FakeAnthropic crashed: KeyError"):
        ask(make_client())
