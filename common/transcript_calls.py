"""The tool calls of each run, read back from a task's transcript (written by workers/transcript.py).

The transcript is one JSON line per message, appended by every run of the task; a line of kind
"run" (with its run_id) starts each run's part. The audit log shows what the agent did from it,
so a person need not read the raw file. It is redacted when written; nothing here adds secrets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# How much of a call's argument the audit log shows.
ARGUMENT_CHARS = 100
# The argument that says the most about a call, per tool; other tools show their input as JSON.
KEY_ARGUMENT = {"run_command": "command", "read_file": "path", "write_file": "path", "edit_file": "path",
                "list_files": "path", "search": "pattern"}


def tool_calls_by_run(path: str | Path | None) -> dict[int, list[dict[str, Any]]]:
    """{run id: [{"name", "argument", "is_error"}, ...]} in call order; empty when the file is not on this host."""
    if not path:
        return {}
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return {}
    calls: dict[int, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] | None = None
    by_id: dict[str, dict[str, Any]] = {}
    for line in lines:
        entry = _parse(line)
        kind = entry.get("kind")
        if kind == "run" and isinstance(entry.get("run_id"), int):
            current = calls.setdefault(entry["run_id"], [])
        elif current is not None and kind == "assistant":
            for block in _blocks(entry):
                if block.get("type") == "tool_use":
                    call = {"name": str(block.get("name", "")), "argument": short_argument(block),
                            "is_error": None}
                    current.append(call)
                    by_id[str(block.get("id"))] = call
        elif kind == "tool_results":
            for block in _blocks(entry):
                call = by_id.get(str(block.get("tool_use_id")))
                if call is not None:
                    call["is_error"] = bool(block.get("is_error"))
    return calls


def short_argument(block: dict[str, Any]) -> str:
    """One line a person can scan: the command, the path, or the input as compact JSON, trimmed."""
    data = block.get("input") if isinstance(block.get("input"), dict) else {}
    key = KEY_ARGUMENT.get(str(block.get("name")))
    if key and isinstance(data.get(key), str):
        text = data[key]
    elif block.get("name") == "finish":
        text = str(data.get("summary", ""))
    else:
        text = json.dumps(data, ensure_ascii=False, sort_keys=True)
    text = " ".join(text.split())
    return text if len(text) <= ARGUMENT_CHARS else text[:ARGUMENT_CHARS - 1] + "…"


def _parse(line: str) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except ValueError:  # a line cut short by a crash mid-write
        return {}
    return entry if isinstance(entry, dict) else {}


def _blocks(entry: dict[str, Any]) -> list[dict[str, Any]]:
    content = entry.get("content")
    return [block for block in content if isinstance(block, dict)] if isinstance(content, list) else []
