"""The agent's tools, confined to the task's checkout: files, search and shell commands."""

from workers.tools.paths import PathRefused, ToolError
from workers.tools.shell import CommandPolicy, CommandRefused
from workers.tools.toolbox import ToolResult, Toolbox

__all__ = ["CommandPolicy", "CommandRefused", "PathRefused", "ToolError", "ToolResult", "Toolbox"]
