"""The one interface everything the agent or the repository runs goes through.

`Sandbox.run(command, paths, limits)` runs a bash command line for one task and gives back its
output. The agent loop, the test gate and the pipeline never know which backend runs it:
bubblewrap (the default: namespaces, no network, nothing of the host but a read-only system)
or none (an operator's explicit choice, recorded on every run). A container backend (an image
per specialty) would be a third class with the same two methods.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from common.errors import ForgecrewError

MB = 1024 * 1024


class SandboxUnavailable(ForgecrewError):
    """No sandbox can be made on this host; the worker must not start (unless COMMAND_SANDBOX=none)."""


class SandboxError(ForgecrewError):
    """The sandbox could not be set up for one command (a network filter failed, a mount was refused)."""


@dataclass(frozen=True)
class Limits:
    """What one command may use; each limit ends or hampers it with a line saying which one."""

    wall_seconds: float = 120.0
    memory_mb: int = 2048  # writable memory of each process (RLIMIT_DATA)
    processes: int = 256  # processes and threads alive at once, the whole command's
    cpu_seconds: int = 600  # CPU time of each process
    file_size_mb: int = 1024  # the largest file a process may write
    open_files: int = 1024
    output_mb: int = 16  # output read before the command is stopped
    network: bool = False  # user-mode networking that reaches neither the host nor private ranges

    def with_wall(self, seconds: float) -> Limits:
        return replace(self, wall_seconds=seconds)

    def describe(self) -> str:
        return (f"memory {self.memory_mb} MB per process, {self.processes} processes, {self.cpu_seconds} "
                f"CPU-seconds per process, files up to {self.file_size_mb} MB, {self.output_mb} MB of output, "
                f"{self.wall_seconds:g} s, network {'user-mode (no host, no private ranges)' if self.network else 'none'}")


@dataclass(frozen=True)
class SandboxPaths:
    """One task's directories on the host; only these (and a read-only system) are visible inside."""

    checkout: Path  # the agent's working tree: the one writable tree besides tmp and home
    home: Path
    tmp: Path
    objects: Path | None = None  # the repository's own shared object store, read-only
    name: str = "repo"  # the checkout's directory name inside the sandbox


@dataclass(frozen=True)
class CommandResult:
    exit_code: int | None  # None when the command was stopped (time or output limit)
    output: str  # stdout and stderr interleaved, head and tail kept when too long
    timed_out: bool
    stopped_leftovers: bool  # processes it left running were killed when it returned
    seconds: float
    limit: str | None = None  # which limit stopped or hampered it, in words for the model
    output_exceeded: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.output_exceeded


class Sandbox(Protocol):
    """Runs a task's commands; `prepare` once per workspace, then `run` for every command."""

    name: str  # recorded on every run: bubblewrap, none, ...
    confined: bool  # False only for COMMAND_SANDBOX=none

    def prepare(self, paths: SandboxPaths) -> None:
        """Make the task's directories usable by the sandbox's user (e.g. give them to it)."""
        ...

    def adopt(self, path: Path) -> None:
        """A file or directory the worker created in the checkout: let the sandbox's user own it."""
        ...

    def inside(self, paths: SandboxPaths) -> Path:
        """Where the checkout appears to the commands (their working directory)."""
        ...

    def run(self, command: str, paths: SandboxPaths, limits: Limits, *, keep: int = 20_000,
            env: dict[str, str] | None = None) -> CommandResult:
        """Run `command` with bash in the checkout; every process it started is gone on return."""
        ...


def limit_hint(result: CommandResult, limits: Limits, signal_number: int | None) -> str | None:
    """Name the limit a failed command most likely ran into, from how it ended and what it printed."""
    if result.output_exceeded:
        return f"the output limit ({limits.output_mb} MB) was reached and the command was stopped"
    if result.timed_out:
        return None  # the caller says so in its own words
    if signal_number == 24:  # SIGXCPU
        return f"a process used its {limits.cpu_seconds} CPU-seconds and was stopped"
    if signal_number == 25:  # SIGXFSZ
        return f"a process tried to write a file larger than the {limits.file_size_mb} MB limit"
    text = result.output[-4000:]
    if "fork: retry" in text or "fork: Resource temporarily unavailable" in text or \
            "Cannot fork" in text or "can't fork" in text:
        return f"the process limit ({limits.processes}) was reached"
    if "Cannot allocate memory" in text or "MemoryError" in text or "bad_alloc" in text or \
            "out of memory" in text.lower():
        return f"a process reached the memory limit ({limits.memory_mb} MB per process)"
    if "File size limit exceeded" in text:
        return f"a process tried to write a file larger than the {limits.file_size_mb} MB limit"
    return None
