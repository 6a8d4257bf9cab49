"""Start one sandbox process, copy its output with a cap, and stop it whole at a deadline.

Shared by every backend: the backend builds the command line (bwrap, the reaper), this module
runs it in its own process group, reads stdout and stderr from one pipe, and kills the group
when the wall time or the output limit is reached, or when anything (a Celery soft time limit,
a signal) interrupts the wait.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

KILL_GRACE_SECONDS = 2.0


class CappedOutput:
    """Keeps the first and last `limit/2` bytes of a stream and counts what was cut between."""

    def __init__(self, limit: int) -> None:
        self.half = max(limit // 2, 1)
        self.head = bytearray()
        self.tail = bytearray()
        self.cut = 0
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
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


@dataclass(frozen=True)
class Finished:
    returncode: int | None  # None when stopped
    output: str
    timed_out: bool
    output_exceeded: bool
    seconds: float


@contextmanager
def data_fds(contents: Sequence[bytes]) -> Iterator[list[int]]:
    """Read ends of pipes already holding `contents` (for bwrap's --ro-bind-data), closed afterwards."""
    readers: list[int] = []
    try:
        for data in contents:
            read_end, write_end = os.pipe()
            readers.append(read_end)
            with os.fdopen(write_end, "wb") as out:  # small files only: they must fit the pipe buffer
                out.write(data)
        yield readers
    finally:
        for fd in readers:
            os.close(fd)


class StatusPipe:
    """A pipe the command's wrapper writes "exit-code leftovers" into, out of the command's reach."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()

    def __enter__(self) -> StatusPipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_writer()
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1

    def close_writer(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def read(self) -> tuple[int, int] | None:
        """(exit code, processes left running), or None when the wrapper never reported."""
        self.close_writer()
        try:
            os.set_blocking(self.read_fd, False)
            text = os.read(self.read_fd, 200).decode(errors="replace").split()
        except (BlockingIOError, OSError):
            return None
        finally:
            os.close(self.read_fd)
            self.read_fd = -1
        try:
            return int(text[0]), int(text[1])
        except (IndexError, ValueError):
            return None


def run_process(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], timeout: float, keep: int,
                max_bytes: int, pass_fds: Sequence[int] = (),
                started_hook: Callable[[subprocess.Popen[bytes]], None] | None = None) -> Finished:
    """Run `argv` in its own process group; stop the group at `timeout` or past `max_bytes` of output.

    `started_hook(process)` runs right after the start (the network setup uses it); whatever it
    raises stops the process before the error goes on.
    """
    started = time.monotonic()
    process = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                               pass_fds=tuple(pass_fds))
    output = CappedOutput(keep)
    assert process.stdout is not None
    stopped = False
    try:
        if started_hook is not None:
            started_hook(process)
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            ended = _pump_until_exit(process, selector, output, started + timeout, max_bytes)
            if ended == "exit":
                # reap the leader first: a group with nobody left then answers killpg with ESRCH at
                # once, instead of a scan of /proc for live members behind the leader's zombie
                # (Linux keeps a pid that is still some group's id from being reused)
                process.wait()
            stop_group(process.pid)
            stopped = True
            process.wait()
            _drain(selector, output, time.monotonic() + 1.0, max_bytes)
    finally:
        if not stopped:
            stop_group(process.pid)
            process.wait()
        process.stdout.close()
    timed_out = ended == "timeout"
    exceeded = ended == "output" or output.total > max_bytes
    return Finished(None if (timed_out or exceeded) else process.returncode, output.text(), timed_out, exceeded,
                    time.monotonic() - started)


def _pump_until_exit(process: subprocess.Popen[bytes], selector: selectors.BaseSelector,
                     output: CappedOutput, deadline: float, max_bytes: int) -> str:
    """Copy output until the process exits ("exit"), the deadline passes ("timeout") or too much came ("output")."""
    while process.poll() is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout"
        if not selector.get_map():  # output closed: wait for the exit itself, not a select timeout
            try:
                process.wait(timeout=min(remaining, 0.05))
            except subprocess.TimeoutExpired:
                pass
            continue
        for key, _ in selector.select(min(remaining, 0.05)):
            _read(selector, key.fileobj, output)  # type: ignore[arg-type]
        if output.total > max_bytes:
            return "output"
    return "exit"


def _drain(selector: selectors.BaseSelector, output: CappedOutput, deadline: float, max_bytes: int) -> None:
    """Read what is left in the pipe; stop early if a process that escaped the group holds it open."""
    while selector.get_map() and time.monotonic() < deadline and output.total <= max_bytes:
        for key, _ in selector.select(max(deadline - time.monotonic(), 0)):
            _read(selector, key.fileobj, output)  # type: ignore[arg-type]


def _read(selector: selectors.BaseSelector, stream: object, output: CappedOutput) -> None:
    chunk = os.read(stream.fileno(), 65536)  # type: ignore[attr-defined]
    if chunk:
        output.add(chunk)
    else:
        selector.unregister(stream)


def stop_group(pgid: int) -> bool:
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


def signal_of(returncode: int | None) -> int | None:
    """The signal that ended a process, from a Popen return code or a shell's 128+N status."""
    if returncode is None:
        return None
    if returncode < 0:
        return -returncode
    if 128 < returncode < 128 + 65:
        return returncode - 128
    return None
