"""The agent's tool set: Anthropic tool schemas plus one `call` that turns every failure into a result."""

from __future__ import annotations

import copy
import math
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.tools import files
from workers.tools.paths import ToolError
from workers.tools.shell import CommandPolicy, run_command, safe_env, truncate_middle

_TYPES: dict[str, type | tuple[type, ...]] = {"string": str, "integer": int, "boolean": bool,
                                              "number": (int, float)}


@dataclass(frozen=True)
class ToolResult:
    content: str
    is_error: bool = False


def _schema(name: str, description: str, required: list[str], **properties: Any) -> dict[str, Any]:
    return {"name": name, "description": description,
            "input_schema": {"type": "object", "properties": properties, "required": required,
                             "additionalProperties": False}}


def _prop(kind: str, description: str) -> dict[str, str]:
    return {"type": kind, "description": description}


SCHEMAS = [
    _schema("list_files", "List files and directories (directories end in /) under a directory of the "
            "repository, skipping .git.", [],
            path=_prop("string", "Directory relative to the repository root. Default '.'."),
            max_depth=_prop("integer", "How many directory levels to show. Default 3.")),
    _schema("read_file", "Read a text file with line numbers. Use start_line/end_line for large files.",
            ["path"], path=_prop("string", "File path relative to the repository root."),
            start_line=_prop("integer", "First line to show, 1-based."),
            end_line=_prop("integer", "Last line to show, inclusive.")),
    _schema("write_file", "Create or overwrite a file with the given content; parent directories are "
            "created. Prefer edit_file for changing part of an existing file.", ["path", "content"],
            path=_prop("string", "File path relative to the repository root."),
            content=_prop("string", "The complete new content of the file.")),
    _schema("edit_file", "Replace an exact piece of text in a file. old_text must match exactly once "
            "(include surrounding lines to make it unique) unless replace_all is true.",
            ["path", "old_text", "new_text"], path=_prop("string", "File path relative to the repository root."),
            old_text=_prop("string", "Exact text to replace, including whitespace and indentation."),
            new_text=_prop("string", "Text to put in its place."),
            replace_all=_prop("boolean", "Replace every occurrence. Default false.")),
    _schema("search", "Search file contents for a regular expression; prints path:line:text.", ["pattern"],
            pattern=_prop("string", "Regular expression (extended syntax)."),
            path=_prop("string", "Directory or file to search, relative to the repository root. Default '.'."),
            glob=_prop("string", "Only files matching this glob, e.g. '*.py'.")),
    _schema("run_command", "Run a bash command in the repository root (tests, builds, git status/diff/log). "
            "No network credentials are available; the command is killed at its time limit.", ["command"],
            command=_prop("string", "The bash command line."),
            timeout=_prop("number", "Seconds before the command is killed; at most the configured limit.")),
]


class Toolbox:
    """Tools confined to one checkout; `call` never raises for a failure the model can react to."""

    def __init__(self, root: Path, *, policy: CommandPolicy | None = None, command_timeout: float = 120,
                 output_limit: int = 20_000, env: Mapping[str, str] | None = None,
                 home: Path | None = None, tmp: Path | None = None, sandbox: Sequence[str] = (),
                 time_left: Callable[[], float] = lambda: math.inf) -> None:
        self.root = Path(root).resolve()
        self.sandbox = tuple(sandbox)
        self.policy = policy or CommandPolicy()
        self.command_timeout = command_timeout
        self.time_left = time_left  # the run's remaining wall time caps every command
        self.output_limit = output_limit
        self.env = safe_env(home or self.root.parent / "home", tmp or self.root.parent / "tmp", env)
        self._handlers: dict[str, Callable[..., ToolResult]] = {
            "list_files": lambda **a: ToolResult(files.list_files(self.root, **a)),
            "read_file": lambda **a: ToolResult(files.read_file(self.root, limit=self.output_limit, **a)),
            "write_file": lambda **a: ToolResult(files.write_file(self.root, **a)),
            "edit_file": lambda **a: ToolResult(files.edit_file(self.root, **a)),
            "search": lambda **a: ToolResult(files.search(self.root, timeout=self._limit(None), **a)),
            "run_command": self._run_command,
        }

    def schemas(self) -> list[dict[str, Any]]:
        """Tool definitions in the shape the Anthropic Messages API takes in `tools`."""
        return copy.deepcopy(SCHEMAS)

    def call(self, name: str, args: Mapping[str, Any] | None) -> ToolResult:
        """Run one tool; bad arguments, refusals and failures come back as is_error results."""
        handler = self._handlers.get(name)
        if handler is None:
            return ToolResult(f"unknown tool {name!r}; available tools: {', '.join(self._handlers)}", True)
        try:
            arguments = _validated(name, args)
            result = handler(**arguments)
        except ToolError as exc:
            return ToolResult(str(exc), True)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            return ToolResult(f"{name} failed: {exc}", True)
        return ToolResult(truncate_middle(result.content, self.output_limit), result.is_error)

    def _run_command(self, command: str, timeout: float | None = None) -> ToolResult:
        self.policy.check(command)
        if timeout is not None and timeout <= 0:
            raise ToolError("timeout must be a positive number of seconds")
        limit = self._limit(timeout)
        room = max(self.output_limit - 300, 200)  # leaves space for the status lines around the output
        result = run_command(command, cwd=self.root, env=self.env, timeout=limit, output_limit=room,
                             sandbox=self.sandbox)
        output = result.output or "(no output)"
        if result.timed_out:
            return ToolResult(f"command killed after the {limit:g}s time limit (its whole process group was "
                              f"stopped); output so far:\n{output}", True)
        note = "\n[background processes still running when the command ended were stopped]"
        status = f"exit code {result.exit_code}" if result.exit_code >= 0 else f"killed by signal {-result.exit_code}"
        return ToolResult(f"{status}\n{output}" + (note if result.stopped_leftovers else ""), result.exit_code != 0)

    def _limit(self, requested: float | None) -> float:
        """The command's time limit: what the model asked for, within the specialty's and the run's."""
        left = self.time_left()
        if left <= 0:
            raise ToolError("the run's time budget (FORGECREW_MAX_WALL_SECONDS) is spent; call finish")
        return min(requested or self.command_timeout, self.command_timeout, left)


def _validated(name: str, args: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check arguments against the tool's schema so the model gets a precise complaint."""
    if not isinstance(args, Mapping):
        raise ToolError(f"{name} expects a JSON object of arguments")
    schema = next(item["input_schema"] for item in SCHEMAS if item["name"] == name)
    missing = [key for key in schema["required"] if key not in args]
    if missing:
        raise ToolError(f"{name} is missing required argument(s): {', '.join(missing)}")
    for key, value in args.items():
        spec = schema["properties"].get(key)
        if spec is None:
            raise ToolError(f"{name} has no argument {key!r}; it takes {', '.join(schema['properties'])}")
        expected = _TYPES[spec["type"]]
        if value is not None and (not isinstance(value, expected) or (spec["type"] != "boolean"
                                                                       and isinstance(value, bool))):
            raise ToolError(f"{name}: argument {key!r} must be a {spec['type']}")
    return {key: value for key, value in args.items() if value is not None}
