"""Run the agent's shell commands: allowlisted environment, command policy, process-group time limit."""

from __future__ import annotations

import os
import re
import selectors
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from workers.tools.paths import ToolError
from workers.tools.sandbox import death_prefix

DEFAULT_DENIED = ("sudo", "git push", "git remote", "ssh", "scp")
ALWAYS_ALLOWED = ("cd", "pwd", "echo", "printf", "true", "false", "test", "[", "export", "set", "unset")
WRAPPERS = {"env", "command", "exec", "nohup", "time", "nice", "builtin", "timeout", "stdbuf", "xargs"}
SHELLS = {"sh", "bash", "dash", "zsh"}
SEPARATORS = {"&&", "||", ";", ";;", "|", "|&", "&", "(", ")", "{", "}"}
KILL_GRACE_SECONDS = 2.0
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_WRAPPER_ARGUMENT = re.compile(r"^(-.*|\d+(\.\d+)?[smhd]?)$")  # options and durations of wrappers


class CommandRefused(ToolError):
    """The command policy does not let the agent run this command."""


@dataclass(frozen=True)
class CommandPolicy:
    """Prefixes of commands the agent may (allowed; empty = any) and may never (denied) run.

    A guardrail against accidents, not a sandbox: the real protection is that commands hold no
    credentials. Every simple command of a pipeline or list is checked; denied always wins.
    """

    allowed: tuple[str, ...] = ()
    denied: tuple[str, ...] = DEFAULT_DENIED

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed", tuple(self.allowed))  # settings hand over lists
        object.__setattr__(self, "denied", tuple(self.denied))

    def check(self, command: str) -> None:
        """Raise CommandRefused naming the rule when any part of `command` is not permitted."""
        for words in simple_commands(command):
            for rule in self.denied:
                if _matches(words, rule):
                    raise CommandRefused(f"`{rule}` is not allowed here (refused: {' '.join(words)})")
            if self.allowed and not any(_matches(words, rule) for rule in self.allowed + ALWAYS_ALLOWED):
                raise CommandRefused(f"`{words[0]}` is not an allowed command; allowed: {', '.join(self.allowed)}")


def simple_commands(command: str) -> list[list[str]]:
    """Split a shell line into the normalized words of each simple command it runs."""
    text = command.replace("\n", " ; ").replace("`", " ; ").replace("$(", " ( ")
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as exc:
        raise CommandRefused(f"cannot parse the command: {exc}") from None
    commands, current = [], []
    for token in tokens + [";"]:
        if token in SEPARATORS:
            commands.extend(_unwrap(current))
            current = []
        else:
            current.append(token)
    return commands


def _unwrap(tokens: list[str]) -> list[list[str]]:
    """Drop assignments and wrappers (env, nohup, ...); look inside `bash -c '...'`."""
    while tokens and (_ASSIGNMENT.match(tokens[0]) or os.path.basename(tokens[0]) in WRAPPERS
                      or (_WRAPPER_ARGUMENT.match(tokens[0]) and len(tokens) > 1)):
        tokens = tokens[1:]
    if not tokens:
        return []
    name = os.path.basename(tokens[0])
    if name in SHELLS and "-c" in tokens[1:-1]:
        return simple_commands(tokens[tokens.index("-c", 1) + 1])
    words, skip_next = [name], False
    for token in tokens[1:]:
        if skip_next:
            skip_next = False
        elif token.startswith("-"):
            skip_next = name == "git" and token in ("-c", "-C")
        else:
            words.append(token)
    return [words]


def _matches(words: list[str], rule: str) -> bool:
    prefix = rule.split()
    return words[: len(prefix)] == prefix


def safe_env(home: Path, tmp: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of agent commands, built from an allowlist so no secret can leak in.

    Creates `home` and `tmp`; `extra` is added last, as the caller's explicit choice.
    """
    home.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": _path_without_own_venv(), "HOME": str(home), "TMPDIR": str(tmp),
        "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TERM": "dumb", "CI": "true",
        "PYTHONDONTWRITEBYTECODE": "1", "GIT_TERMINAL_PROMPT": "0", "PAGER": "cat", "GIT_PAGER": "cat",
    }
    env.update(extra or {})
    return env


def _path_without_own_venv() -> str:
    """PATH without forgecrew's own virtualenv, so `pip install` never lands in the worker's venv."""
    own = os.path.join(sys.prefix, "bin") if sys.prefix != sys.base_prefix else None
    parts = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep)
    return os.pathsep.join(part for part in parts if part and part != own)


@dataclass(frozen=True)
class CommandResult:
    exit_code: int | None  # None when killed at the time limit
    output: str  # stdout and stderr interleaved, head and tail kept when too long
    timed_out: bool
    stopped_leftovers: bool  # background processes were still running when the shell exited
    seconds: float


class CappedOutput:
    """Keeps the first and last `limit/2` bytes of a stream and counts what was cut between."""

    def __init__(self, limit: int) -> None:
        self.half = max(limit // 2, 1)
        self.head = bytearray()
        self.tail = bytearray()
        self.cut = 0

    def add(self, chunk: bytes) -> None:
        room = self.half - len(self.head)
        self.head += chunk[:room]
        self.tail += chunk[max(room, 0):]
        if len(self.tail) > self.half:
            self.cut += len(self.tail) - self.half
            del self.tail[: len(self.tail) - self.half]

    def text(self) -> str:
        head = self.head.decode("utf-8", "replace")
        tail = self.tail.decode("utf-8", "replace")
        return head + (f"\n[... {self.cut} bytes of output cut ...]\n" if self.cut else "") + tail


def truncate_middle(text: str, limit: int) -> str:
    """Shorten `text` to about `limit` characters, keeping its head and tail and saying how much went."""
    if len(text) <= limit:
        return text
    half = max(limit // 2, 1)
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


def run_command(command: str, *, cwd: Path, env: Mapping[str, str], timeout: float,
                output_limit: int = 20_000, sandbox: Sequence[str] = ()) -> CommandResult:
    """Run `command` with bash in its own process group; at the time limit kill the whole group.

    `sandbox` is a prefix such as tools/sandbox.command_prefix gives (its own PID namespace).
    Whatever interrupts the wait (a Celery soft time limit, a signal) still stops the group.
    """
    started = time.monotonic()
    process = subprocess.Popen([*death_prefix(), *sandbox, "bash", "-c", command], cwd=cwd, env=dict(env),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    output = CappedOutput(output_limit)
    assert process.stdout is not None
    stopped = False
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            timed_out = not _pump_until_exit(process, selector, output, started + timeout)
            leftovers = _stop_group(process.pid)
            stopped = True
            process.wait()
            _drain(selector, output, time.monotonic() + 1.0)
    finally:
        if not stopped:
            _stop_group(process.pid)
            process.wait()
        process.stdout.close()
    return CommandResult(None if timed_out else process.returncode, output.text(), timed_out,
                         leftovers and not timed_out, time.monotonic() - started)


def _pump_until_exit(process: subprocess.Popen[bytes], selector: selectors.BaseSelector,
                     output: CappedOutput, deadline: float) -> bool:
    """Copy output until the shell exits (True) or the deadline passes (False); select also paces the loop."""
    while process.poll() is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        for key, _ in selector.select(min(remaining, 0.05)):
            _read(selector, key.fileobj, output)  # type: ignore[arg-type]
    return True


def _drain(selector: selectors.BaseSelector, output: CappedOutput, deadline: float) -> None:
    """Read what is left in the pipe; stop early if a process that escaped the group holds it open."""
    while selector.get_map() and time.monotonic() < deadline:
        for key, _ in selector.select(max(deadline - time.monotonic(), 0)):
            _read(selector, key.fileobj, output)  # type: ignore[arg-type]


def _read(selector: selectors.BaseSelector, stream: object, output: CappedOutput) -> None:
    chunk = os.read(stream.fileno(), 65536)  # type: ignore[attr-defined]
    if chunk:
        output.add(chunk)
    else:
        selector.unregister(stream)


def _stop_group(pgid: int) -> bool:
    """SIGTERM the process group, SIGKILL it after a grace period; True if anything was running."""
    if not _group_alive(pgid):
        return False
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, 1.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return True
            time.sleep(0.02)
    return True


def _group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process is still in the group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not os.path.isdir("/proc"):
        return True
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
    return False
