"""COMMAND_SANDBOX=none: commands run as the worker's user, on its file system and network.

Only an operator's explicit choice selects this (never `auto`), it is logged loudly at start,
and every run records it. It still keeps what does not need a sandbox: the allowlisted
environment, the resource limits (except the process count, which the kernel would count
over all of the worker user's processes), the time and output limits, and the promise that
nothing a command started outlives it: the command runs under a small reaper that is a child
subreaper, so even a `setsid` daemon is reparented to it and killed when the command returns.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from workers.sandbox.base import MB, CommandResult, Limits, SandboxPaths
from workers.sandbox.bubblewrap import result_of
from workers.sandbox.environment import safe_env
from workers.sandbox.process import StatusPipe, run_process
from workers.sandbox.wrapper import script

# The reaper: a subreaper that runs the wrapper and kills whatever is left when it returns, or
# when the worker dies (the lifeline pipe, whose other end only the worker holds, reads EOF).
REAPER = r"""
import ctypes, os, select, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
status_fd, lifeline = int(sys.argv[1]), int(sys.argv[2])
me = os.getpid()

def descendants():
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open("/proc/%s/stat" % entry).read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if stat[0] not in ("Z", "X"):
                parents[int(entry)] = int(stat[1])
    found, frontier = set(), {me}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found

def sweep():
    seen = set()
    for _ in range(200):
        pids = descendants()
        if not pids:
            break
        seen |= pids
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        time.sleep(0.01)
    return seen

def stop(*_):
    sweep()
    os._exit(143)

signal.signal(signal.SIGTERM, stop)
child = os.fork()
if child == 0:
    os.close(status_fd)
    os.close(lifeline)
    os.execvp("bash", ["bash", "--noprofile", "--norc", "-c", sys.argv[3], "sandbox", sys.argv[4]])
pidfd = os.pidfd_open(child)
while pidfd not in select.select([pidfd, lifeline], [], [])[0]:
    stop()  # the worker is gone: so is everything the command started
_, status = os.waitpid(child, 0)
code = os.waitstatus_to_exitcode(status)
left = sweep()
os.write(status_fd, ("%d %d\n" % (code if code >= 0 else 128 - code, len(left))).encode())
os._exit(code if code >= 0 else 128 - code)
"""


class UnsandboxedRunner:
    name = "none"
    confined = False

    def prepare(self, paths: SandboxPaths) -> None:
        for directory in (paths.checkout, paths.home, paths.tmp):
            directory.mkdir(parents=True, exist_ok=True)

    def adopt(self, path: Path) -> None:
        """Files stay the worker's: commands run as the worker's user."""

    def inside(self, paths: SandboxPaths) -> Path:
        return paths.checkout

    def run(self, command: str, paths: SandboxPaths, limits: Limits, *, keep: int = 20_000,
            env: dict[str, str] | None = None) -> CommandResult:
        lifeline_read, lifeline_write = os.pipe()  # the write end stays here, closed on exec elsewhere
        try:
            with StatusPipe() as status:
                argv = [sys.executable, "-I", "-S", "-c", REAPER, str(status.write_fd), str(lifeline_read),
                        script(limits, None, processes=False), command]
                finished = run_process(argv, cwd=paths.checkout, env=safe_env(str(paths.home), str(paths.tmp), env),
                                       timeout=limits.wall_seconds, keep=keep, max_bytes=limits.output_mb * MB,
                                       pass_fds=[status.write_fd, lifeline_read])
                return result_of(finished, status.read(), limits)
        finally:
            os.close(lifeline_read)
            os.close(lifeline_write)
