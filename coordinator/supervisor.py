"""Run `forgecrew up`'s children: their logs on our stdout with a prefix, restarts, and a clean stop.

A child that crashes is restarted (a worker killed by the OOM killer must not leave its
specialty without a consumer until someone notices); one that keeps crashing soon after
each start stops the whole cluster, since restarting it for ever would hide the cause.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO

RESTART_DELAY_SECONDS = 1.0
# Set in each child's environment: the pid of the `up` that must outlive it (see die_with_supervisor).
SUPERVISOR_VARIABLE = "FORGECREW_SUPERVISOR_PID"
PR_SET_PDEATHSIG = 1
# A child that dies this soon after starting, this many times in a row, is broken, not unlucky.
QUICK_EXIT_SECONDS = 20.0
MAX_QUICK_EXITS = 3

Echo = Callable[[str], None]


def default_echo(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@dataclass
class Child:
    """One supervised process: a name for its log prefix, its argv, and whether it is restarted."""

    name: str
    argv: Sequence[str]
    env: dict[str, str] | None = None
    restart: bool = True
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    quick_exits: int = 0
    restarts: int = 0
    pumps: list[threading.Thread] = field(default_factory=list)


class Supervisor:
    """Start children, pump their output, restart crashed ones; stop them all on request."""

    def __init__(self, children: Sequence[Child], *, echo: Echo = default_echo, grace: float = 30.0) -> None:
        self.children = list(children)
        self.echo = echo
        self.grace = grace
        self.stopping = threading.Event()
        self.width = max((len(child.name) for child in self.children), default=8)
        self._echo_lock = threading.Lock()

    def say(self, name: str, line: str) -> None:
        with self._echo_lock:
            self.echo(f"{name:<{self.width}} | {line}")

    def attach(self, name: str, process: subprocess.Popen[bytes], skip: Sequence[str] = ()) -> threading.Thread:
        """Pump a process started elsewhere (the embedded broker) through the same prefixed log."""
        return self._pump(name, process.stdout, skip)

    def start(self, child: Child) -> None:
        env = {**(child.env or os.environ), "PYTHONUNBUFFERED": "1", SUPERVISOR_VARIABLE: str(os.getpid())}
        child.process = subprocess.Popen(list(child.argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, process_group=0)
        child.started_at = time.monotonic()
        child.pumps = [self._pump(child.name, child.process.stdout)]

    def _pump(self, name: str, stream: IO[bytes] | None, skip: Sequence[str] = ()) -> threading.Thread:
        def run() -> None:
            if stream is None:
                return
            for raw in iter(stream.readline, b""):
                line = raw.decode(errors="replace").rstrip()
                if not any(noise in line for noise in skip):
                    self.say(name, line)
            stream.close()

        thread = threading.Thread(target=run, name=f"log-{name}", daemon=True)
        thread.start()
        return thread

    def run(self) -> int:
        """Until SIGINT/SIGTERM or a child that cannot stay up; returns the exit status for `up`."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stopping.set())
        for child in self.children:
            self.start(child)
        status = 0
        while not self.stopping.is_set():
            failed = self._check_children()
            if failed:
                status = 1
                break
            self.stopping.wait(0.5)
        self.stop()
        return status

    def _check_children(self) -> bool:
        """Restart what exited; True when a child has exited too often to go on."""
        for child in self.children:
            process = child.process
            if process is None or process.poll() is None:
                continue
            code = process.returncode
            lived = time.monotonic() - child.started_at
            if not child.restart:
                self.say("up", f"{child.name} exited with status {code}; stopping everything")
                return True
            child.quick_exits = child.quick_exits + 1 if lived < QUICK_EXIT_SECONDS else 0
            if child.quick_exits >= MAX_QUICK_EXITS:
                self.say("up", f"{child.name} exited with status {code} {child.quick_exits} times within "
                               f"{QUICK_EXIT_SECONDS:.0f} s of starting; stopping everything (see its log above)")
                return True
            _signal_group(process.pid, signal.SIGKILL)  # what it left behind in its group
            child.restarts += 1
            self.say("up", f"{child.name} exited with status {code} after {lived:.0f} s; restarting it")
            time.sleep(RESTART_DELAY_SECONDS)
            self.start(child)
        return False

    def stop(self) -> None:
        """SIGTERM each child's group, then SIGKILL what is left once its leader exited or the grace is over.

        A group is killed even after its leader exited: whatever is still in it (a pool process,
        git, an agent's helper) was left behind and would otherwise outlive `forgecrew up`.
        """
        running = [child.process for child in self.children if child.process is not None]
        for process in running:
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for process in running:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
        for child in self.children:
            for pump in child.pumps:
                pump.join(timeout=2)


def die_with_supervisor(environ: dict[str, str] | None = None) -> None:
    """In a child of `up`: get SIGTERM when `up` dies, even by SIGKILL, instead of running on orphaned.

    Each child leads its own process group (so Ctrl-C reaches only `up`, which stops them in
    order); without this, killing `up` itself would leave the whole cluster running.
    """
    environ = os.environ if environ is None else environ
    expected = environ.pop(SUPERVISOR_VARIABLE, None)
    if not expected:
        return
    arm_death_signal()
    if os.getppid() != int(expected):  # `up` died before the death signal was armed
        sys.exit(1)


def arm_death_signal() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (a no-op elsewhere).

    Safe to call between fork and exec (Popen's preexec_fn) as long as no other thread runs.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is empty
