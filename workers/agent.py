"""The agent loop: ask the model, run the tools it calls, until it finishes or a limit ends it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common.errors import ForgecrewError
from workers.budget import Budget, BudgetExhausted
from workers.llm import LLMClient, ModelError, Usage
from workers.pricing import cost_usd
from workers.tools.toolbox import Toolbox, ToolResult
from workers.transcript import Transcript

log = logging.getLogger(__name__)

FINISH_TOOL = {
    "name": "finish",
    "description": "Call when the change is complete (or cannot be made). The summary goes into the "
                   "pull request: what you changed, why, and anything a reviewer should check.",
    "input_schema": {
        "type": "object",
        "properties": {"summary": {"type": "string", "description": "Markdown summary for the PR."}},
        "required": ["summary"],
    },
}


class Submitted(ForgecrewError):
    """The model finished: by the finish tool, or by ending its turn without a tool call."""


class Stopped(ForgecrewError):
    """Someone else ended the run (lease lost, task cancelled)."""


class Refused(ForgecrewError):
    """The model declined the request (stop_reason "refusal"); retrying the same prompt will not help."""


CUT_OFF_NOTE = ("Your last reply was cut off at the max_tokens limit, so nothing in it was run or recorded. "
                "Continue from where you stopped: make the next step smaller (one tool call, a shorter summary).")


@dataclass
class AgentResult:
    outcome: str  # submitted | budget | model_error | refused | stopped
    summary: str
    usage: Usage
    cost_usd: float | None
    turns: int
    model: str = ""


@dataclass
class Agent:
    llm: LLMClient
    toolbox: Toolbox
    budget: Budget
    transcript: Transcript
    system: str
    max_tokens_per_call: int = 8192
    allowed_tools: tuple[str, ...] = ()  # the specialty's allowance; empty = every tool
    should_stop: Callable[[], str | None] = lambda: None
    # what people asked for on the issue since the last step (workers/requests_inbox.py)
    incoming: Callable[[], list[str]] = lambda: []
    on_event: Callable[[str], None] = lambda message: None
    redact: Callable[[str], str] = lambda text: text  # before trimming, so no part of a secret shows
    messages: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost: float | None = None
    model_used: str = ""

    def run(self, user_message: str) -> AgentResult:
        """Add `user_message` (the task, or test failures to repair) and loop until an exit."""
        self._add_user_text(user_message)
        self.transcript.record("user", content=user_message)
        try:
            while True:
                self.step()
        except Submitted as exc:
            return self._result("submitted", str(exc))
        except BudgetExhausted as exc:
            return self._result("budget", str(exc))
        except ModelError as exc:
            return self._result("model_error", str(exc))
        except Refused as exc:
            return self._result("refused", str(exc))
        except Stopped as exc:
            return self._result("stopped", str(exc))
        finally:
            self.transcript.record("usage", usage=vars(self.usage), cost_usd=self.cost, turns=self.budget.turns)

    def _add_user_text(self, text: str) -> None:
        """Roles must alternate: after tool results, the new text joins that user turn."""
        if self.messages and self.messages[-1]["role"] == "user":
            last = self.messages[-1]
            content = last["content"]
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
            last["content"] = [*blocks, {"type": "text", "text": text}]
        else:
            self.messages.append({"role": "user", "content": text})

    def step(self) -> None:
        """One model call and the tool calls it asked for."""
        reason = self.should_stop()
        if reason:
            raise Stopped(reason)
        self._take_incoming()
        self.budget.check()
        tools = [*(t for t in self.toolbox.schemas() if self._allowed(t["name"])), FINISH_TOOL]
        reply = self.llm.create(system=self.system, tools=tools, messages=self.messages,
                                max_tokens=self.budget.tokens_left(self.max_tokens_per_call))
        self._account(reply.model, reply.usage)
        content = [_block_dict(block) for block in reply.message.content]
        stop_reason = reply.message.stop_reason
        if content:  # the API refuses an empty assistant turn in the history
            self.messages.append({"role": "assistant", "content": content})
        self.transcript.record("assistant", model=reply.model, content=content,
                               stop_reason=stop_reason, usage=vars(reply.usage))
        calls = [block for block in content if block["type"] == "tool_use"]
        if stop_reason == "refusal":
            raise Refused("the model refused to continue (stop_reason refusal)"
                          + (f": {_text_of(content)}" if _text_of(content) else ""))
        if stop_reason == "max_tokens":
            self._cut_off(calls)
        elif not calls:
            raise Submitted(_text_of(content) or "The model ended its turn without a summary.")
        else:
            self._run_tools(calls)

    def _take_incoming(self) -> None:
        """A request made while the agent works joins its next turn, as a colleague's message would."""
        for text in self.incoming():
            self._add_user_text(text)
            self.transcript.record("user", content=text)
            self.on_event("a new request from the issue joined the conversation")

    def _cut_off(self, calls: list[dict[str, Any]]) -> None:
        """A truncated reply is neither a finish nor safe to run: end on the budget or ask to go on."""
        self.budget.check_output()
        results = [{"type": "tool_result", "tool_use_id": call["id"], "is_error": True,
                    "content": "not run: the reply was cut off, so this call may be incomplete"} for call in calls]
        if results:
            self.messages.append({"role": "user", "content": results})
        self._add_user_text(CUT_OFF_NOTE)
        self.transcript.record("cut_off", content=[*results, {"type": "text", "text": CUT_OFF_NOTE}])

    def _run_tools(self, calls: list[dict[str, Any]]) -> None:
        results, summary = [], None
        for call in calls:
            if call["name"] == "finish":
                summary = str((call.get("input") or {}).get("summary") or "").strip() or "Finished."
                results.append({"type": "tool_result", "tool_use_id": call["id"], "content": "Recorded."})
                continue
            self.on_event(f"tool {call['name']} {_short(self.redact(str(call.get('input'))))}")
            result = (self.toolbox.call(call["name"], call.get("input") or {}) if self._allowed(call["name"])
                      else ToolResult(f"tool {call['name']!r} is not available to this specialty", True))
            results.append({"type": "tool_result", "tool_use_id": call["id"], "content": result.content or "(no output)",
                            "is_error": result.is_error})
        self.messages.append({"role": "user", "content": results})
        self.transcript.record("tool_results", content=results)
        if summary is not None:
            raise Submitted(summary)

    def _allowed(self, name: str) -> bool:
        return not self.allowed_tools or name in self.allowed_tools

    def _account(self, model: str, usage: Usage) -> None:
        self.model_used = model
        self.usage = self.usage + usage
        call_cost = cost_usd(model, usage)
        if call_cost is not None:
            self.cost = (self.cost or 0.0) + call_cost
        self.budget.spend(output_tokens=usage.output_tokens, cost_usd=call_cost)

    def _result(self, outcome: str, summary: str) -> AgentResult:
        self.transcript.record("exit", outcome=outcome, summary=summary)
        return AgentResult(outcome, summary, self.usage, self.cost, self.budget.turns, self.model_used)


def _block_dict(block: Any) -> dict[str, Any]:
    """Content blocks as the API takes them back (text and tool_use trimmed to their fields)."""
    if block.type == "text":
        return {"type": "text", "text": block.text}
    if block.type == "tool_use":
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    return block.model_dump(exclude_none=True)


def _text_of(content: list[dict[str, Any]]) -> str:
    return "\n".join(block["text"] for block in content if block["type"] == "text").strip()


def _short(value: Any, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"
