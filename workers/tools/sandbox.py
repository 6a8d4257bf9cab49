"""Keep the worker's own secrets out of reach of the commands the agent and the repository run.

A command's environment is built from an allowlist (tools/shell.safe_env), but a process of
the same user can still read another's initial environment through /proc/<pid>/environ: the
agent's `cat /proc/$PPID/environ` would print the worker's API keys. Two layers stop that:

- commands run in their own PID namespace with their own /proc (util-linux `unshare`, with a
  user namespace when the worker is not root), so the worker's processes are not there to read;
  when the namespace's first process exits, the kernel ends every process left in it;
- worker, `up` and coordinator processes mark themselves non-dumpable (inherited by forked
  children), so where namespaces are unavailable a process of the same non-root user still
  cannot read their /proc files or attach to them;
- a command is killed when the worker process dies (PR_SET_PDEATHSIG), so a SIGKILLed or
  OOM-killed worker leaves no command running on the host.

Neither is a full sandbox: the commands still share the worker's user and file system. For
untrusted repositories run workers as a dedicated user on a host (or container) of their own.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shutil
import subprocess

from common.errors import ForgecrewError

log = logging.getLogger(__name__)

PR_SET_DUMPABLE = 4


class SandboxUnavailable(ForgecrewError):
    """COMMAND_SANDBOX asks for namespaces and this host cannot make them."""


@functools.cache
def namespace_prefix() -> tuple[str, ...] | None:
    """The `unshare` command line that works on this host, or None; probed once per process."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    common = ("--pid", "--fork", "--kill-child", "--mount-proc")
    candidates = [(unshare, *common)] if os.geteuid() == 0 else []
    candidates += [(unshare, "--user", "--map-current-user", *common),
                   (unshare, "--user", "--map-root-user", *common)]  # util-linux before 2.38
    for candidate in candidates:
        try:
            probe = subprocess.run([*candidate, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return candidate
    return None


def command_prefix(mode: str) -> tuple[str, ...]:
    """What to put before `bash -c` for the COMMAND_SANDBOX mode (auto, namespaces or none: settings check it)."""
    if mode == "none":
        return ()
    prefix = namespace_prefix()
    if prefix is not None:
        return prefix
    if mode == "namespaces":
        raise SandboxUnavailable("FORGECREW_COMMAND_SANDBOX=namespaces, but `unshare --pid --mount-proc` does not "
                                 "work on this host (is util-linux installed and are user namespaces allowed?)")
    _warn_once()
    return ()


@functools.cache
def _warn_once() -> None:
    log.warning("commands run without a PID namespace (unshare is missing or not permitted): a command can "
                "read the environment of other processes of this user; set FORGECREW_COMMAND_SANDBOX=none "
                "to silence this or install util-linux")


def make_undumpable() -> bool:
    """Forbid same-user processes to read this process's /proc files or ptrace it (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@functools.cache
def death_prefix() -> tuple[str, ...]:
    """`setpriv --pdeathsig KILL`, so a command is killed when the worker dies; () where unavailable.

    Set by a program the child execs rather than in preexec_fn: the worker runs threads (the
    lease heartbeat), and code run between fork and exec in a threaded parent can deadlock.
    Under `unshare --kill-child` the namespace, and every process in it, goes too.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    candidate = (setpriv, "--pdeathsig", "KILL")
    try:
        ok = subprocess.run([*candidate, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return candidate if ok else ()
