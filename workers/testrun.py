"""Find and run the repository's tests inside the workspace, with the agent's safe environment."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.tools.shell import run_command, safe_env

log = logging.getLogger(__name__)
OUTPUT_LIMIT = 12_000


@dataclass(frozen=True)
class TestResult:
    command: str
    passed: bool
    exit_code: int | None
    output: str
    seconds: float
    timed_out: bool = False

    def headline(self) -> str:
        if self.timed_out:
            return f"`{self.command}` timed out after {self.seconds:.0f}s"
        verdict = "passed" if self.passed else f"failed (exit {self.exit_code})"
        return f"`{self.command}` {verdict} in {self.seconds:.1f}s"


def detect_test_command(checkout: Path) -> str | None:
    """The usual test command for what the repository contains, or None."""
    if (checkout / "package.json").is_file() and "test" in _npm_scripts(checkout / "package.json"):
        return "npm test"
    if (checkout / "go.mod").is_file():
        return "go test ./..."
    if (checkout / "Cargo.toml").is_file():
        return "cargo test"
    if any((checkout / name).is_file() for name in ("pytest.ini", "pyproject.toml", "setup.cfg", "tox.ini")) or \
            (checkout / "tests").is_dir() or any(checkout.glob("test_*.py")):
        return "python -m pytest -q"
    makefile = checkout / "Makefile"
    if makefile.is_file() and "\ntest:" in "\n" + makefile.read_text(errors="replace"):
        return "make test"
    return None


def _npm_scripts(path: Path) -> dict[str, Any]:
    """package.json's scripts; a file npm could not use either means no npm tests, not a crash."""
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("%s is not readable JSON (%s); not running npm tests", path, exc)
        return {}
    scripts = data.get("scripts") if isinstance(data, dict) else None
    if not isinstance(scripts, dict):
        if not isinstance(data, dict) or "scripts" in data:
            log.warning("%s has no scripts object; not running npm tests", path)
        return {}
    return scripts


def run_tests(command: str, checkout: Path, scratch: Path, *, timeout: float,
              sandbox: Sequence[str] = ()) -> TestResult:
    """Run `command` as the agent's commands run: same sandbox, own process group, killed whole at the limit."""
    result = run_command(command, cwd=checkout, env=safe_env(scratch / "home", scratch / "tmp"),
                         timeout=timeout, output_limit=OUTPUT_LIMIT, sandbox=sandbox)
    return TestResult(command, result.exit_code == 0 and not result.timed_out, result.exit_code, result.output,
                      result.seconds, result.timed_out)
