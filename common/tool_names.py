"""The agent's tool names, for checking a specialty's `tools` at settings load (workers/tools/toolbox.py has
the schemas; a test keeps this list equal to them, so common/ need not import the worker side)."""

from __future__ import annotations

TOOL_NAMES = ("list_files", "read_file", "write_file", "edit_file", "search", "run_command")
# Always offered to the agent whatever a specialty allows; naming it in `tools` is harmless.
FINISH_TOOL_NAME = "finish"


def unknown_tools(names: list[str]) -> list[str]:
    """The names in `names` that are no agent tool."""
    known = {*TOOL_NAMES, FINISH_TOOL_NAME}
    return [name for name in names if name not in known]
