"""Find and run the repository's tests in the sandbox, as the agent's own commands run."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.repo_files import RepoFileRefused, read_bytes
from workers.sandbox import Limits, Sandbox, SandboxPaths

log = logging.getLogger(__name__)
OUTPUT_LIMIT = 12_000
DETECT_LIMIT = 1024 * 1024


@dataclass(frozen=True)
class TestResult:
    command: str
    passed: bool
    exit_code: int | None
    output: str
    seconds: float
    timed_out: bool = False
    limit: str | None = None  # a sandbox limit the run met

    def headline(self) -> str:
        if self.timed_out:
            return f"`{self.command}` timed out after {self.seconds:.0f}s"
        verdict = "passed" if self.passed else f"failed (exit {self.exit_code})"
        return f"`{self.command}` {verdict} in {self.seconds:.1f}s" + (f"; {self.limit}" if self.limit else "")


def detect_test_command(checkout: Path) -> str | None:
    """The usual test command for what the repository contains, or None."""
    if _regular(checkout, "package.json") and "test" in _npm_scripts(checkout):
        return "npm test"
    if _regular(checkout, "go.mod"):
        return "go test ./..."
    if _regular(checkout, "Cargo.toml"):
        return "cargo test"
    if any(_regular(checkout, name) for name in ("pytest.ini", "pyproject.toml", "setup.cfg", "tox.ini")) or \
            _directory(checkout, "tests") or any(_regular(checkout, p.name) for p in checkout.glob("test_*.py")):
        return "python3 -m pytest -q"
    if _regular(checkout, "Makefile") and "\ntest:" in "\n" + _text(checkout, "Makefile"):
        return "make test"
    return None


def _regular(checkout: Path, name: str) -> bool:
    path = checkout / name
    return not path.is_symlink() and path.is_file()


def _directory(checkout: Path, name: str) -> bool:
    path = checkout / name
    return not path.is_symlink() and path.is_dir()


def _text(checkout: Path, name: str) -> str:
    try:
        data = read_bytes(checkout, name, limit=DETECT_LIMIT, truncate=True)
    except RepoFileRefused as exc:
        log.warning("%s", exc)
        return ""
    return (data or b"").decode("utf-8", "replace")


def _npm_scripts(checkout: Path) -> dict[str, Any]:
    """package.json's scripts; a file npm could not use either means no npm tests, not a crash."""
    try:
        data = json.loads(_text(checkout, "package.json") or "{}")
    except json.JSONDecodeError as exc:
        log.warning("package.json is not valid JSON (line %s); not running npm tests", exc.lineno)
        return {}
    scripts = data.get("scripts") if isinstance(data, dict) else None
    if not isinstance(scripts, dict):
        if not isinstance(data, dict) or "scripts" in data:
            log.warning("package.json has no scripts object; not running npm tests")
        return {}
    return scripts


def run_tests(command: str, sandbox: Sandbox, paths: SandboxPaths, limits: Limits) -> TestResult:
    """Run `command` in the sandbox, as the agent's commands run; stopped whole at its limits."""
    result = sandbox.run(command, paths, limits, keep=OUTPUT_LIMIT)
    return TestResult(command, result.ok, result.exit_code, result.output, result.seconds, result.timed_out,
                      result.limit)
