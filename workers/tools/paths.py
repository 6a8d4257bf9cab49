"""Confine every path a tool touches to the checkout, so the agent cannot read or write outside it."""

from __future__ import annotations

from pathlib import Path

from common.errors import ForgecrewError


class ToolError(ForgecrewError):
    """A tool call the model must correct; the message goes back to it as the tool's result."""


class PathRefused(ToolError):
    """The path leads outside the checkout (or into .git for a write)."""


def resolve_inside(root: Path, path: str) -> Path:
    """Resolve `path` (relative to root, or absolute) with symlinks followed; refuse it outside root."""
    if not isinstance(path, str) or not path.strip() or "\0" in path:
        raise PathRefused(f"invalid path {path!r}: give a path relative to the repository root")
    top = root.resolve()
    raw = Path(path)
    try:
        resolved = (raw if raw.is_absolute() else top / raw).resolve()
    except (RuntimeError, OSError) as exc:  # symlink loops
        raise PathRefused(f"cannot resolve {path}: {exc}") from None
    if resolved != top and top not in resolved.parents:
        raise PathRefused(f"{path} is outside the repository; only paths inside {top} are allowed")
    return resolved


def resolve_for_write(root: Path, path: str) -> Path:
    """Like resolve_inside, and refuse git's own directory, which only forgecrew may change."""
    resolved = resolve_inside(root, path)
    if ".git" in resolved.relative_to(root.resolve()).parts:
        raise PathRefused(f"{path} is inside .git; writing git's internals is not allowed")
    return resolved


def relative(root: Path, resolved: Path) -> str:
    """The path as the model should see it: relative to the repository root."""
    return str(resolved.relative_to(root.resolve())) or "."
