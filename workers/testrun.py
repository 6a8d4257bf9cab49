"""Find and run the repository's tests inside the workspace, with the agent's safe environment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from workers.tools.shell import safe_env

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
    if (checkout / "package.json").is_file():
        scripts = json.loads((checkout / "package.json").read_text() or "{}").get("scripts", {})
        if "test" in scripts:
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


def run_tests(command: str, checkout: Path, scratch: Path, *, timeout: float) -> TestResult:
    """Run `command` in its own process group; the whole group dies at the time limit."""
    home, tmp = scratch / "home", scratch / "tmp"
    home.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    process = subprocess.Popen(["bash", "-c", command], cwd=checkout, env=safe_env(home, tmp),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    timed_out = False
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(process.pid)
        out, _ = process.communicate()
    output = _trim(out.decode("utf-8", errors="replace"))
    code = process.returncode
    return TestResult(command, code == 0 and not timed_out, code, output, time.monotonic() - started, timed_out)


def _kill_group(pid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        time.sleep(0.5)


def _trim(text: str) -> str:
    if len(text) <= OUTPUT_LIMIT:
        return text
    head, tail = OUTPUT_LIMIT // 3, OUTPUT_LIMIT - OUTPUT_LIMIT // 3
    return f"{text[:head]}\n… [{len(text) - OUTPUT_LIMIT} characters cut] …\n{text[-tail:]}"
