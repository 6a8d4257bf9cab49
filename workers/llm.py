"""The model side of the agent: one Messages API call with prompt caching, retries and fallbacks."""

from __future__ import annotations

import email.utils
import importlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anthropic
from anthropic.types import Message

from common.errors import ForgecrewError
from common.retry import RetryPolicy, call_with_retry
from workers.pricing import cost_usd

if TYPE_CHECKING:
    from common.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

EPHEMERAL = {"type": "ephemeral"}
NEVER_RETRY = frozenset({400, 401, 403, 404, 413})
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
RETRY_TYPES = frozenset({"overloaded_error", "api_error", "rate_limit_error"})
KEY_VARIABLE = "FORGECREW_ANTHROPIC_API_KEY"


def _transport_errors() -> tuple[type[BaseException], ...]:
    """httpx errors escape the SDK while a stream is read; anthropic 2.x uses httpx2, older httpx."""
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


CONNECTION_ERRORS = (anthropic.APIConnectionError, *_transport_errors())


@dataclass(frozen=True)
class Usage:
    """Tokens of one or more calls; input_tokens excludes what was read from or written to the cache."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
        )

    @classmethod
    def from_api(cls, usage: Any) -> Usage:
        """Read the SDK's usage object (or a dict); fields the API left out or null count as 0."""

        def field(name: str) -> int:
            value = usage.get(name) if isinstance(usage, dict) else getattr(usage, name, None)
            return int(value or 0)

        return cls(
            input_tokens=field("input_tokens"),
            output_tokens=field("output_tokens"),
            cache_read_tokens=field("cache_read_input_tokens"),
            cache_write_tokens=field("cache_creation_input_tokens"),
        )


@dataclass(frozen=True)
class ModelReply:
    """The model's message, which model produced it (primary or a fallback) and what it used."""

    message: Message
    model: str
    usage: Usage

    @property
    def cost_usd(self) -> float | None:
        return cost_usd(self.model, self.usage)


class ModelError(ForgecrewError):
    """The model cannot be used for this run; the message says what a person should check."""

    def __init__(self, message: str, *, status: int | None = None, error_type: str | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.request_id = request_id


@dataclass(frozen=True)
class _Failure:
    """What the API said went wrong, already scrubbed of the API key."""

    status: int | None
    error_type: str | None
    message: str
    request_id: str | None = None

    def label(self) -> str:
        parts = [str(self.status) if self.status else "", self.error_type or ""]
        suffix = f" [request {self.request_id}]" if self.request_id else ""
        return f"({' '.join(p for p in parts if p)}): {self.message}{suffix}"


class TransientAPIError(Exception):
    """A failure worth retrying; raised and caught inside this module only."""

    def __init__(self, failure: _Failure, *, retry_after: float | None, overloaded: bool) -> None:
        super().__init__(failure.label())
        self.failure = failure
        self.retry_after = retry_after
        self.overloaded = overloaded


def retry_after_seconds(headers: Any) -> float | None:
    """The server's requested wait, from retry-after-ms, retry-after seconds or an HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _root_cause(exc: BaseException) -> str:
    """The innermost reason (e.g. "Connection refused"), which the SDK's own message hides."""
    text = str(exc)
    while exc.__cause__ is not None:
        exc = exc.__cause__
        text = str(exc) or text
    return text


def _classify(exc: BaseException, redact: Callable[[str], str]) -> TransientAPIError | _Failure:
    """A retryable TransientAPIError, or the _Failure that ends the run; the never-list beats any header."""
    if not isinstance(exc, anthropic.APIStatusError):
        failure = _Failure(None, "connection_error", redact(_root_cause(exc)))
        return TransientAPIError(failure, retry_after=None, overloaded=False)
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    status = exc.status_code if exc.status_code >= 400 else None  # None: an error event inside a 200 stream
    failure = _Failure(status, error.get("type"), redact(str(error.get("message") or exc.message)),
                       exc.response.headers.get("request-id") or body.get("request_id"))
    overloaded = status == 529 or failure.error_type == "overloaded_error"
    should_retry = exc.response.headers.get("x-should-retry")
    if status in NEVER_RETRY or (should_retry == "false" and not overloaded):
        return failure
    if overloaded or should_retry == "true" or status in RETRY_STATUS or (
            status is None and failure.error_type in RETRY_TYPES):
        return TransientAPIError(failure, retry_after=retry_after_seconds(exc.response.headers), overloaded=overloaded)
    return failure


def _fatal_message(failure: _Failure, model: str) -> str:
    """A message for an error that retrying cannot fix, naming the setting to check."""
    label = failure.label()
    if failure.status == 401:
        return f"Anthropic API rejected the API key {label}; check {KEY_VARIABLE}"
    if failure.status == 403:
        return f"Anthropic API denied access to {model} {label}; check the key's workspace in {KEY_VARIABLE}"
    if failure.status == 404:
        return (f"Anthropic API did not find {model} {label}; check FORGECREW_MODEL, "
                "FORGECREW_FALLBACK_MODELS and FORGECREW_ANTHROPIC_BASE_URL")
    if failure.status == 413:
        return f"request to {model} is too large for the Anthropic API {label}; the conversation must be shorter"
    if failure.status == 400:
        return f"Anthropic API rejected the request to {model} {label}"
    return f"Anthropic API error for {model} {label}"


def _mark(block: Any) -> dict[str, Any]:
    """A copy of `block` that ends a cached prefix."""
    as_dict = block if isinstance(block, dict) else block.model_dump(mode="json", exclude_none=True)
    return {**as_dict, "cache_control": dict(EPHEMERAL)}


def cached_system(system: str | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """System blocks with a breakpoint on the last one, so the prompt is billed once per 5 minutes."""
    if isinstance(system, str):
        return [_mark({"type": "text", "text": system})] if system else []
    blocks = list(system)
    return [*blocks[:-1], _mark(blocks[-1])] if blocks else []


def cached_tools(tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool definitions with a breakpoint on the last one: tools come first in the cached prefix."""
    items = list(tools)
    return [*items[:-1], _mark(items[-1])] if items else []


def _cacheable(block: Any) -> bool:
    """The API refuses cache_control on an empty text block."""
    return not (isinstance(block, dict) and block.get("type") == "text" and not block.get("text"))


MESSAGE_BREAKPOINTS = 2  # with the tools' and the system's: the API's limit of 4 per request


def cached_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with a breakpoint on the last block of each of the last two user turns.

    The newest one writes this turn's prefix; the one before sits exactly where the previous
    request wrote, so the cache is read even when a turn adds more than the ~20 blocks the API
    looks back from a breakpoint (a reply with many parallel tool calls).
    """
    result = list(messages)
    users = [index for index, message in enumerate(result) if message.get("role") == "user"]
    for index in users[-MESSAGE_BREAKPOINTS:]:
        message = result[index]
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
        if blocks and _cacheable(blocks[-1]):
            result[index] = {**message, "content": [*blocks[:-1], _mark(blocks[-1])]}
    return result


def request_params(*, system: str | Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]],
                   messages: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Keyword arguments for messages.create/stream/count_tokens, with cache breakpoints added."""
    params: dict[str, Any] = {"messages": cached_messages(messages)}
    if blocks := cached_system(system):
        params["system"] = blocks
    if definitions := cached_tools(tools):
        params["tools"] = definitions
    return params


class LLMClient:
    """The anthropic SDK behind one retry helper: backoff, retry-after, fallback models, clear errors."""

    def __init__(self, *, api_key: str, model: str, base_url: str | None = None,
                 fallback_models: Sequence[str] = (), max_retries: int = 3, timeout: float = 600.0,
                 stream: bool = True, retry_base_delay: float = 1.0, retry_max_delay: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not api_key:
            raise ModelError(f"no Anthropic API key: set {KEY_VARIABLE}")
        self.model = model
        self.fallback_models = list(fallback_models)
        self.stream = stream
        self._key = api_key
        self._sleep = sleep
        self._policy = RetryPolicy(retry_on=(TransientAPIError,), never=(ModelError,), attempts=max_retries + 1,
                                   base_delay=retry_base_delay, max_delay=retry_max_delay)
        # max_retries=0: every retry goes through common.retry, where it is logged and bounded.
        self._client = anthropic.Anthropic(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings, *, purpose: str = "the agent calls the Anthropic Messages API",
                      **options: Any) -> LLMClient:
        """The client a worker uses, configured from FORGECREW_* settings; `options` override any argument
        (LLM triage passes its own model, timeout and retries)."""
        settings.require("anthropic_api_key", purpose=purpose)
        return cls(**{"api_key": settings.secret("anthropic_api_key"), "base_url": settings.anthropic_base_url,
                      "model": settings.model, "fallback_models": settings.fallback_models,
                      "timeout": settings.model_timeout_seconds, **options})

    @property
    def base_url(self) -> str:
        return str(self._client.base_url)

    def create(self, *, system: str | list[dict[str, Any]], tools: list[dict[str, Any]],
               messages: list[dict[str, Any]], max_tokens: int,
               tool_choice: dict[str, Any] | None = None) -> ModelReply:
        """One model turn; the caller's lists are copied, never changed. `tool_choice` can force a tool."""
        params = {**request_params(system=system, tools=tools, messages=messages), "max_tokens": max_tokens}
        if tool_choice is not None:
            params["tool_choice"] = tool_choice
        return self._with_fallbacks(lambda model: self._send(model, params))

    def count_tokens(self, *, system: str | list[dict[str, Any]], tools: list[dict[str, Any]],
                     messages: list[dict[str, Any]]) -> int:
        """Input tokens the request would use, to trim history before it overflows the context."""
        params = request_params(system=system, tools=tools, messages=messages)
        return self._with_fallbacks(
            lambda model: self._client.messages.count_tokens(model=model, **params).input_tokens)

    def _send(self, model: str, params: dict[str, Any]) -> ModelReply:
        if self.stream:
            with self._client.messages.stream(model=model, **params) as stream:
                message: Message = stream.get_final_message()
        else:
            message = self._client.messages.create(model=model, **params)
        return ModelReply(message=message, model=model, usage=Usage.from_api(message.usage))

    def _with_fallbacks(self, call: Callable[[str], T]) -> T:
        """Retry on the primary model; when it stays overloaded, move down the fallback list."""
        models = [self.model, *self.fallback_models]
        for index, model in enumerate(models):
            try:
                return call_with_retry(lambda: self._attempt(call, model), self._policy,
                                       what=f"Anthropic request to {model}",
                                       delay_hint=lambda exc: getattr(exc, "retry_after", None), sleep=self._sleep)
            except TransientAPIError as exc:
                if exc.overloaded and index + 1 < len(models):
                    log.warning("%s still overloaded after %d attempts; falling back to %s",
                                model, self._policy.attempts, models[index + 1])
                    continue
                raise self._gave_up(exc.failure, models[: index + 1], overloaded=exc.overloaded) from None
        raise AssertionError("unreachable")

    def _attempt(self, call: Callable[[str], T], model: str) -> T:
        try:
            return call(model)
        except (anthropic.APIStatusError, *CONNECTION_ERRORS) as exc:
            outcome = _classify(exc, self._redact)
            if isinstance(outcome, TransientAPIError):
                raise outcome from None
            raise ModelError(_fatal_message(outcome, model), status=outcome.status,
                             error_type=outcome.error_type, request_id=outcome.request_id) from None

    def _gave_up(self, failure: _Failure, models: list[str], *, overloaded: bool) -> ModelError:
        attempts = self._policy.attempts
        if failure.error_type == "connection_error":
            text = (f"could not reach the Anthropic API at {self.base_url} after {attempts} attempts: "
                    f"{failure.message}; check FORGECREW_ANTHROPIC_BASE_URL and the network")
        elif overloaded:
            text = (f"Anthropic API overloaded for {', '.join(models)} after {attempts} attempts each "
                    f"{failure.label()}; try again later or set FORGECREW_FALLBACK_MODELS")
        else:
            text = (f"Anthropic API still failing for {models[-1]} after {attempts} attempts "
                    f"{failure.label()}; try again later")
        return ModelError(text, status=failure.status, error_type=failure.error_type, request_id=failure.request_id)

    def _redact(self, text: str) -> str:
        """The key must never reach a log line or an exception, even if a proxy echoes it."""
        return text.replace(self._key, "[redacted]") if len(self._key) >= 4 else text
