"""Keep the worker's own secrets out of reach of the commands the agent and the repository run.

A command's environment is built from an allowlist (tools/shell.safe_env), but a process of
the same user can still read another's initial environment through /proc/<pid>/environ: the
agent's `cat /proc/$PPID/environ` would print the worker's API keys. Two layers stop that:

- commands run in their own PID namespace with their own /proc (util-linux `unshare`, with a
  user namespace when the worker is not root), so the worker's processes are not there to read;
  when the namespace's first process exits, the kernel ends every process left in it;
- the worker marks itself non-dumpable, so where namespaces are unavailable a process of the same
  (non-root) user still cannot read its /proc files or attach to it;
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
import signal
import subprocess

from common.errors import ForgecrewError

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
MODES = ("auto", "namespaces", "none")


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
    """What to put before `bash -c` for the configured COMMAND_SANDBOX mode."""
    if mode not in MODES:
        raise SandboxUnavailable(f"FORGECREW_COMMAND_SANDBOX must be one of {', '.join(MODES)}, not {mode!r}")
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


def die_with_parent() -> None:
    """In a just-forked command: be killed when the worker dies, so no command outlives a lost worker.

    For `unshare`, its --kill-child then ends the namespace, and with it every process in it.
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
