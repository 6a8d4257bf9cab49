"""The environment of sandboxed commands: built from an allowlist, so no secret of the worker leaks in."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping


def safe_env(home: str, tmp: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a command; `extra` is added last, as the caller's explicit choice."""
    env = {
        "PATH": path_without_own_venv(), "HOME": str(home), "TMPDIR": str(tmp), "USER": "agent",
        "LOGNAME": "agent", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TERM": "dumb", "CI": "true",
        "PYTHONDONTWRITEBYTECODE": "1", "GIT_TERMINAL_PROMPT": "0", "PAGER": "cat", "GIT_PAGER": "cat",
    }
    env.update(extra or {})
    return env


def path_without_own_venv() -> str:
    """PATH without forgecrew's own virtualenv, so `pip install` never lands in the worker's venv."""
    own = os.path.join(sys.prefix, "bin") if sys.prefix != sys.base_prefix else None
    parts = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep)
    return os.pathsep.join(part for part in parts if part and part != own)
