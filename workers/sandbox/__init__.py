"""Where every command of the agent and the target repository runs: one interface, several backends."""

from workers.sandbox.base import CommandResult, Limits, Sandbox, SandboxError, SandboxPaths, SandboxUnavailable
from workers.sandbox.factory import make_sandbox, make_undumpable
from workers.sandbox.limits import limits_for

__all__ = ["CommandResult", "Limits", "Sandbox", "SandboxError", "SandboxPaths", "SandboxUnavailable",
           "limits_for", "make_sandbox", "make_undumpable"]
