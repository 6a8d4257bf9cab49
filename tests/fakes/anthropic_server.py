"""A local HTTP server that speaks the Anthropic Messages API, so tests run the real SDK offline.

Shapes follow the recorded exchanges in shared/fixtures/anthropic: ids, usage fields, SSE event
order (ping after the first content_block_start, input_json_delta starting with ""), and the error
envelope. A test scripts the model's replies; the server validates requests like the real API.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_KEY = "sk-ant-api03-fake-test-key-000000000000"
RATE_LIMIT_MESSAGE = (  # verbatim from fixtures/anthropic/extracted/error.429.rate_limit_error.json
    "This request would exceed your organization's rate limit of 20,000,000 prompt bytes per hour "
    "(org: 5576611f-a1ee-427c-9800-298d9579899c, model: claude-sonnet-4-5-20250929). For details, refer to: "
    "https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage. Please "
    "reduce the prompt length or the maximum tokens requested, or try again later. You may also contact sales "
    "at https://www.anthropic.com/contact-sales to discuss your options for a rate limit increase."
)
_ID_CHARS = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """An id shaped like the API's: msg_01..., toolu_01..., req_011C... (24 characters after the prefix)."""
    lead = "011C" if prefix == "req" else "01"
    return f"{prefix}_{lead}" + "".join(random.choices(_ID_CHARS, k=24 - len(lead)))


# ---- reply specs and the helpers tests use to build them ---------------------------------------


@dataclass
class Reply:
    """A successful model turn: content blocks (tool_use ids are filled in) and a stop reason."""

    content: list[dict[str, Any]]
    stop_reason: str = "end_turn"
    delay: float = 0.0


@dataclass
class ErrorReply:
    """An HTTP error in the API's envelope; the default x-should-retry matches the real API."""

    status: int
    type: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class StreamError:
    """An `event: error` after message_start on a 200 stream (the live API's mid-stream overload)."""

    type: str = "overloaded_error"
    message: str = "Overloaded"
    delay: float = 0.0


@dataclass
class RawSSE:
    """Replay a recorded text/event-stream body byte for byte."""

    text: str
    delay: float = 0.0


@dataclass
class Dropped:
    """Send part of a reply, then close the connection: what a proxy reset looks like."""

    delay: float = 0.0


Spec = Reply | ErrorReply | StreamError | RawSSE | Dropped
Step = Spec | Callable[[dict[str, Any]], Spec]


def text(reply: str, *, stop_reason: str = "end_turn") -> Reply:
    """The model answers in prose and ends its turn."""
    return Reply([{"type": "text", "text": reply}], stop_reason)


def tool_use(name: str, input: dict[str, Any], text: str | None = None, *, id: str | None = None) -> Reply:
    """The model calls one tool, optionally after a sentence of text."""
    block: dict[str, Any] = {"type": "tool_use", "name": name, "input": input}
    if id:
        block["id"] = id
    content = ([{"type": "text", "text": text}] if text else []) + [block]
    return Reply(content, "tool_use")


def tool_uses(calls: list[tuple[str, dict[str, Any]]], text: str | None = None) -> Reply:
    """The model calls several tools in one turn."""
    blocks = [{"type": "tool_use", "name": name, "input": args} for name, args in calls]
    return Reply(([{"type": "text", "text": text}] if text else []) + blocks, "tool_use")


def error(status: int, type: str, message: str, headers: dict[str, str] | None = None) -> ErrorReply:
    """Any API error, e.g. error(400, "invalid_request_error", "...")."""
    return ErrorReply(status, type, message, dict(headers or {}))


def rate_limited(retry_after: float | None = None) -> ErrorReply:
    """A 429 like the recorded one, with retry-after when given."""
    headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
    return ErrorReply(429, "rate_limit_error", RATE_LIMIT_MESSAGE, {"x-should-retry": "true", **headers})


def overloaded() -> ErrorReply:
    """A 529 overloaded_error."""
    return ErrorReply(529, "overloaded_error", "Overloaded", {"x-should-retry": "true"})


def stream_error(type: str = "overloaded_error", message: str = "Overloaded") -> StreamError:
    """A mid-stream error event (answered as an HTTP error to non-streamed requests)."""
    return StreamError(type, message)


def replay_sse(text: str) -> RawSSE:
    """Serve a recorded SSE body unchanged (e.g. fixtures/anthropic/extracted/stream.tool_use.sse)."""
    return RawSSE(text)


def dropped() -> Dropped:
    """Cut the connection part way through the response."""
    return Dropped()


# ---- request validation, as the real API does it -----------------------------------------------


class Gate:
    """A script step that holds the model's reply until the test opens the gate.

    `reached` is set once a request got here: the agent (or triage) is mid-call, and the test can
    act on the state that holds meanwhile (a comment, a kill, a second delivery) before `opened`.
    """

    def __init__(self, reply: Any, *, wait: float = 60.0) -> None:
        self.reply, self.wait = reply, wait
        self.reached, self.opened = threading.Event(), threading.Event()

    def __call__(self, request: Any) -> Any:
        self.reached.set()
        assert self.opened.wait(self.wait), "the test never opened the gate"
        return self.reply


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return [block for block in content or [] if isinstance(block, dict)]


def _check_messages(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    previous_role, previous_tool_ids = None, set[str]()
    for i, message in enumerate(messages):
        role = message.get("role")
        if i == 0 and role != "user":
            return 'messages: first message must use the "user" role'
        if role == previous_role:
            return ('messages: roles must alternate between "user" and "assistant", '
                    f'but found multiple "{role}" roles in a row')
        blocks = _blocks(message.get("content"))
        if not blocks and i != len(messages) - 1:
            return (f"messages.{i}: all messages must have non-empty content "
                    "except for the optional final assistant message")
        if role == "user" and (problem := _check_tool_results(i, blocks, previous_tool_ids)):
            return problem
        previous_role = role
        previous_tool_ids = {b.get("id") for b in blocks if b.get("type") == "tool_use" and role == "assistant"}
    return None


def _check_tool_results(index: int, blocks: list[dict[str, Any]], tool_ids: set[str]) -> str | None:
    answered = set()
    for j, block in enumerate(blocks):
        if block.get("type") != "tool_result":
            continue
        if block.get("tool_use_id") not in tool_ids:
            return (f"messages.{index}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{block.get('tool_use_id')}. Each `tool_result` block must have a corresponding `tool_use` "
                    "block in the previous message.")
        answered.add(block["tool_use_id"])
    if missing := sorted(tool_ids - answered):
        return (f"messages.{index - 1}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block in the "
                "next message.")
    return None


def _breakpoint_count(body: dict[str, Any]) -> int:
    system = body.get("system")
    blocks = [*(body.get("tools") or []), *(system if isinstance(system, list) else [])]
    for message in body.get("messages") or []:
        blocks.extend(_blocks(message.get("content")))
    return sum(1 for block in blocks if isinstance(block, dict) and block.get("cache_control"))


def _credential(headers: dict[str, str]) -> str | None:
    """The key from x-api-key, or from `Authorization: Bearer` (what anthropic 2.x sends)."""
    if "x-api-key" in headers:
        return headers["x-api-key"]
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


def validate(headers: dict[str, str], body: Any, *, api_key: str, count_only: bool = False) -> ErrorReply | None:
    """The error the real API would answer, or None when the request is acceptable."""
    sent = _credential(headers)
    if sent is None:
        return ErrorReply(401, "authentication_error", "x-api-key header is required")
    if sent != api_key:
        return ErrorReply(401, "authentication_error", "invalid x-api-key")
    if not isinstance(body, dict):
        return ErrorReply(400, "invalid_request_error", "There was an error parsing the body of your request")
    required = ["model", "messages"] + ([] if count_only else ["max_tokens"])
    for name in required:
        if name not in body:
            return ErrorReply(400, "invalid_request_error", f"{name}: Field required")
    if (found := _breakpoint_count(body)) > 4:
        return ErrorReply(400, "invalid_request_error",
                          f"A maximum of 4 blocks with cache_control may be provided. Found {found}.")
    if problem := _check_messages(body["messages"]):
        return ErrorReply(400, "invalid_request_error", problem)
    return None


# ---- token accounting with a prompt cache -------------------------------------------------------


def _strip(block: Any) -> Any:
    return {k: v for k, v in block.items() if k != "cache_control"} if isinstance(block, dict) else block


LOOKBACK_BLOCKS = 20  # the API checks this many block boundaries back from each breakpoint for a hit
CACHE_TTL_SECONDS = 300.0  # ephemeral entries live 5 minutes, refreshed by each read


def minimum_cacheable_tokens(model: str) -> int:
    """The shortest prefix the API caches: 2048 tokens for Haiku-class models, 1024 for Sonnet and Opus."""
    return 2048 if "haiku" in model.lower() else 1024


class PromptCache:
    """Counts cache writes and reads the way the Messages API does.

    An entry is written at a breakpoint (a block with cache_control) whose prefix, in the order
    tools, system, messages, is at least the model's minimum cacheable length. A request reads
    the longest earlier entry whose prefix is byte-identical to its own at a block boundary no more
    than LOOKBACK_BLOCKS before one of its breakpoints. Tokens up to the last breakpoint that were
    not read are cache writes (when that prefix is long enough); the rest are input_tokens.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, ttl: float = CACHE_TTL_SECONDS) -> None:
        self._known: dict[str, float] = {}  # prefix digest -> expiry
        self._lock = threading.Lock()
        self._clock = clock
        self._ttl = ttl

    def usage(self, body: dict[str, Any]) -> dict[str, int]:
        """input_tokens ~ len(json)/4, split into uncached, cache-write and cache-read parts."""
        total = max(1, len(json.dumps(body)) // 4)
        digests, tokens, breakpoints = self._prefixes(body)
        minimum = minimum_cacheable_tokens(str(body.get("model")))
        writable = [i for i in breakpoints if tokens[i] >= minimum]
        now = self._clock()
        with self._lock:
            self._known = {d: expiry for d, expiry in self._known.items() if expiry > now}
            candidates = {i for b in breakpoints for i in range(max(0, b - LOOKBACK_BLOCKS + 1), b + 1)}
            hit = max((i for i in candidates if digests[i] in self._known), default=None)
            if hit is not None:
                self._known[digests[hit]] = now + self._ttl
            for i in writable:
                self._known[digests[i]] = now + self._ttl
        read = tokens[hit] if hit is not None else 0
        end = max([*writable, *([hit] if hit is not None else [])], default=None)
        write = tokens[end] - read if end is not None else 0
        scale = min(1.0, (total - 1) / max(1, read + write))
        read, write = int(read * scale), int(write * scale)
        return {"input_tokens": total - read - write, "cache_creation_input_tokens": write,
                "cache_read_input_tokens": read}

    @staticmethod
    def _prefixes(body: dict[str, Any]) -> tuple[list[str], list[int], list[int]]:
        """Digest and token count of every prefix (tools, then system, then messages), and breakpoints.

        Keys are hashed in the order they were sent: the cache matches bytes, not meaning.
        """
        system = body.get("system") or []
        segments: list[Any] = [*(body.get("tools") or []), *(_blocks(system) if isinstance(system, str) else system)]
        for message in body.get("messages") or []:
            segments.extend({"role": message.get("role"), **b} for b in _blocks(message.get("content")))
        hasher = hashlib.sha256(str(body.get("model")).encode())
        digests, tokens, breakpoints, running = [], [], [], 0
        for index, segment in enumerate(segments):
            encoded = json.dumps(_strip(segment))
            hasher.update(encoded.encode())
            running += len(encoded) // 4
            digests.append(hasher.copy().hexdigest())
            tokens.append(running)
            if isinstance(segment, dict) and segment.get("cache_control"):
                breakpoints.append(index)
        return digests, tokens, breakpoints


# ---- response bodies ----------------------------------------------------------------------------


def render_message(reply: Reply, model: str, usage: dict[str, int]) -> dict[str, Any]:
    """A Message object in the fixture's field order, with fresh ids."""
    content = []
    for block in reply.content:
        if block["type"] == "tool_use":
            block = {"type": "tool_use", "id": block.get("id") or new_id("toolu"), "name": block["name"],
                     "input": block["input"], "caller": {"type": "direct"}}
        content.append(dict(block))
    output = max(1, len(json.dumps(content)) // 4)
    return {
        "model": model, "id": new_id("msg"), "type": "message", "role": "assistant", "content": content,
        "stop_reason": reply.stop_reason, "stop_sequence": None,
        "usage": {**usage, "cache_creation": {"ephemeral_5m_input_tokens": usage["cache_creation_input_tokens"],
                                              "ephemeral_1h_input_tokens": 0},
                  "output_tokens": output, "service_tier": "standard", "inference_geo": "not_available"},
    }


def _pieces(value: str, parts: int = 3) -> list[str]:
    size = max(1, -(-len(value) // parts))
    return [value[i:i + size] for i in range(0, len(value), size)] or [""]


def _block_events(index: int, block: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    if block["type"] == "tool_use":
        start = {**block, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": p}
                  for p in ["", *_pieces(json.dumps(block["input"]), 4)]]
    else:
        start = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in _pieces(block.get("text", ""))]
    events = [("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})]
    if index == 0:
        events.append(("ping", {"type": "ping"}))
    events += [("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}) for d in deltas]
    return events + [("content_block_stop", {"type": "content_block_stop", "index": index})]


def stream_events(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events of `message`, in the order and shape of fixtures' stream.tool_use.sse."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    events = [("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message["content"]):
        events += _block_events(index, block)
    totals = {k: usage[k] for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                                    "output_tokens")}
    events.append(("message_delta", {"type": "message_delta", "usage": totals,
                                     "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None}}))
    return events + [("message_stop", {"type": "message_stop"})]


def format_sse(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)


def error_body(spec: ErrorReply | StreamError, request_id: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": spec.type, "message": spec.message}, "request_id": request_id}


# ---- the server ---------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One request as the server received it; header names are lower-case."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str]
    drop: bool = False


class FakeAnthropic:
    """A Messages API on 127.0.0.1 that plays a script of replies; use as a context manager."""

    def __init__(self, script: list[Step] | None = None, *, api_key: str = DEFAULT_KEY) -> None:
        self.api_key = api_key
        self.script: list[Step] = list(script or [])
        self.requests: list[RecordedRequest] = []
        self.cache = PromptCache()
        self._served = 0
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None

    def add(self, *steps: Step) -> None:
        """Append replies to the script."""
        with self._lock:
            self.script.extend(steps)

    @property
    def base_url(self) -> str:
        assert self._server is not None, "FakeAnthropic is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def message_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/v1/messages"]

    def start(self) -> FakeAnthropic:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-anthropic",
                         daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and close kept-alive connections, so clients really see the server gone."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for connection in list(self._connections):
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._server = None

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Response:
        """Record the request and answer it: validation first, then the next script step."""
        try:
            body: Any = json.loads(raw or b"null")
        except ValueError:
            body = None
        with self._lock:
            self.requests.append(RecordedRequest(method, path, headers, body))
        route = path.split("?", 1)[0]
        if method != "POST" or route not in ("/v1/messages", "/v1/messages/count_tokens"):
            return self._error(ErrorReply(404, "not_found_error", "Not found"))
        counting = route.endswith("count_tokens")
        if problem := validate(headers, body, api_key=self.api_key, count_only=counting):
            return self._error(problem)
        if counting:
            return _json(200, {"input_tokens": max(1, len(json.dumps(body)) // 4)}, new_id("req"))
        return self._play(self._next_spec(body), body)

    def _next_spec(self, body: dict[str, Any]) -> Spec:
        with self._lock:
            number = self._served = self._served + 1
            step = self.script.pop(0) if self.script else None
        if step is None:
            return ErrorReply(500, "api_error", f"FakeAnthropic: no scripted reply left for request #{number} "
                              "to /v1/messages; add a step to the test's script", {"x-should-retry": "false"})
        spec = step(body) if callable(step) else step
        if not isinstance(spec, Spec):
            return ErrorReply(500, "api_error", f"FakeAnthropic: script step #{number} returned {spec!r}, "
                              "not a reply spec", {"x-should-retry": "false"})
        return spec

    def _play(self, spec: Spec, body: dict[str, Any]) -> Response:
        time.sleep(spec.delay)
        streamed = bool(body.get("stream"))
        request_id = new_id("req")
        if isinstance(spec, ErrorReply):
            return self._error(spec, request_id)
        if isinstance(spec, Dropped):
            partial = format_sse(stream_events(render_message(Reply([]), body["model"], self.cache.usage(body)))[:1])
            response = _sse(partial, request_id) if streamed else _json(200, {"model": body["model"]}, request_id)
            return Response(response.status, response.body[:-2], response.headers, drop=True)
        if isinstance(spec, RawSSE):
            return _sse(spec.text, request_id)
        if isinstance(spec, StreamError) and not streamed:
            status = 529 if spec.type == "overloaded_error" else 500
            return self._error(ErrorReply(status, spec.type, spec.message), request_id)
        reply = spec if isinstance(spec, Reply) else Reply([{"type": "text", "text": ""}])
        message = render_message(reply, body["model"], self.cache.usage(body))
        if not streamed:
            return _json(200, message, request_id)
        events = stream_events(message)
        if isinstance(spec, StreamError):
            events = events[:1] + [("error", error_body(spec, request_id))]
        return _sse(format_sse(events), request_id)

    def _error(self, spec: ErrorReply, request_id: str | None = None) -> Response:
        request_id = request_id or new_id("req")
        retry = "true" if spec.status in (408, 409, 429) or spec.status >= 500 else "false"
        response = _json(spec.status, error_body(spec, request_id), request_id)
        response.headers.update({"x-should-retry": retry, **spec.headers})
        return response


def _json(status: int, payload: Any, request_id: str) -> Response:
    return Response(status, json.dumps(payload).encode(), {"content-type": "application/json",
                                                           "request-id": request_id})


def _sse(text: str, request_id: str) -> Response:
    return Response(200, text.encode(), {"content-type": "text/event-stream; charset=utf-8",
                                         "cache-control": "no-cache", "request-id": request_id})


def _handler_for(fake: FakeAnthropic) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with fake._lock:
                fake._connections.add(self.connection)

        def finish(self) -> None:
            with fake._lock:
                fake._connections.discard(self.connection)
            super().finish()

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {name.lower(): value for name, value in self.headers.items()}
            try:
                response = fake.handle(self.command, self.path, headers, raw)
            except Exception as exc:  # a bug in the fake or in a scripted callable: say so, don't hang up
                response = fake._error(ErrorReply(500, "api_error", f"FakeAnthropic crashed: {exc!r}",
                                                  {"x-should-retry": "false"}))
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(response.body) + (100 if response.drop else 0)))
            self.end_headers()
            self.wfile.write(response.body)
            self.wfile.flush()
            if response.drop:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        do_GET = do_POST

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
