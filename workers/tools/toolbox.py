"""The agent's tool set: Anthropic tool schemas plus one `call` that turns every failure into a result."""

from __future__ import annotations

import copy
import math
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.sandbox import CommandResult, Limits, Sandbox, SandboxError, SandboxPaths
from workers.tools import files
from workers.tools.paths import ToolError
from workers.tools.shell import CommandPolicy, truncate_middle

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
            "It runs in a sandbox: no credentials, usually no network, nothing outside the repository but a "
            "read-only system, /tmp and $HOME; it is stopped at its time, memory, process and output limits, "
            "and processes it leaves running are stopped when it returns.", ["command"],
            command=_prop("string", "The bash command line."),
            timeout=_prop("number", "Seconds before the command is killed; at most the configured limit.")),
]


class Toolbox:
    """Tools confined to one checkout; `call` never raises for a failure the model can react to.

    File tools run in the worker on paths resolved inside the checkout; `search` and
    `run_command` run in the sandbox, like the repository's setup and tests.
    """

    def __init__(self, root: Path, *, sandbox: Sandbox, paths: SandboxPaths | None = None,
                 limits: Limits | None = None, policy: CommandPolicy | None = None, command_timeout: float = 120,
                 output_limit: int = 20_000, env: Mapping[str, str] | None = None,
                 time_left: Callable[[], float] = lambda: math.inf) -> None:
        self.root = Path(root).resolve()
        self.sandbox = sandbox
        self.paths = paths or SandboxPaths(self.root, self.root.parent / "home", self.root.parent / "tmp",
                                           name=self.root.name)
        self.limits = limits or Limits()
        self.policy = policy or CommandPolicy()
        self.command_timeout = command_timeout
        self.time_left = time_left  # the run's remaining wall time caps every command
        self.output_limit = output_limit
        self.env = dict(env or {})
        self._handlers: dict[str, Callable[..., ToolResult]] = {
            "list_files": lambda **a: ToolResult(files.list_files(self.root, **a)),
            "read_file": lambda **a: ToolResult(files.read_file(self.root, limit=self.output_limit, **a)),
            "write_file": lambda **a: ToolResult(files.write_file(self.root, adopt=self.sandbox.adopt, **a)),
            "edit_file": lambda **a: ToolResult(files.edit_file(self.root, **a)),
            "search": lambda **a: ToolResult(files.search(self.root, run=self._in_sandbox, **a)),
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
        except SandboxError as exc:
            return ToolResult(f"{name} could not run: {exc}", True)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            return ToolResult(f"{name} failed: {exc}", True)
        return ToolResult(truncate_middle(result.content, self.output_limit), result.is_error)

    def _in_sandbox(self, command: str, timeout: float | None = None) -> CommandResult:
        return self._run(command, self._limit(timeout))

    def _run(self, command: str, limit: float) -> CommandResult:
        room = max(self.output_limit - 300, 200)  # leaves space for the status lines around the output
        return self.sandbox.run(command, self.paths, self.limits.with_wall(limit), keep=room, env=self.env)

    def _run_command(self, command: str, timeout: float | None = None) -> ToolResult:
        self.policy.check(command)
        if timeout is not None and timeout <= 0:
            raise ToolError("timeout must be a positive number of seconds")
        limit = self._limit(timeout)
        result = self._run(command, limit)
        return ToolResult(describe(result, limit), not result.ok)

    def _limit(self, requested: float | None) -> float:
        """The command's time limit: what the model asked for, within the specialty's and the run's."""
        left = self.time_left()
        if left <= 0:
            raise ToolError("the run's time budget (FORGECREW_MAX_WALL_SECONDS) is spent; call finish")
        return min(requested or self.command_timeout, self.command_timeout, left)


def describe(result: CommandResult, wall: float = 0) -> str:
    """The observation the model gets: how the command ended, its output, and any limit it met."""
    output = result.output or "(no output)"
    if result.timed_out:
        return (f"command killed after the {wall or result.seconds:g}s time limit (every process it started was "
                f"stopped); output so far:\n{output}")
    if result.output_exceeded:
        status = "command stopped"
    elif result.exit_code is not None and result.exit_code > 128:
        status = f"exit code {result.exit_code} (killed by signal {result.exit_code - 128})"
    elif result.exit_code is not None and result.exit_code < 0:
        status = f"killed by signal {-result.exit_code}"
    else:
        status = f"exit code {result.exit_code}"
    notes = []
    if result.limit:
        notes.append(f"[sandbox limit: {result.limit}]")
    if result.stopped_leftovers:
        notes.append("[processes it left running in the background were stopped when it returned]")
    return f"{status}\n{output}" + "".join(f"\n{note}" for note in notes)


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
