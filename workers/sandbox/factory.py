"""Pick the sandbox COMMAND_SANDBOX asks for, prove it works here once, and refuse to go on without it."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from pathlib import Path

from common.errors import SettingsError
from common.settings import Settings, config_file
from workers.sandbox.base import Sandbox, SandboxUnavailable
from workers.sandbox.bubblewrap import BubblewrapConfig, BubblewrapSandbox, probe
from workers.sandbox.unsandboxed import UnsandboxedRunner

log = logging.getLogger(__name__)
PR_SET_DUMPABLE = 4
UNSANDBOXED_WARNING = ("FORGECREW_COMMAND_SANDBOX=none: the agent's and the repository's commands run UNSANDBOXED "
                       "as this worker's user, with its files and network. Use it only for repositories whose "
                       "every writer you trust; every run records it.")
_proven: dict[BubblewrapConfig, None] = {}  # probed once per process and configuration


def make_sandbox(settings: Settings) -> Sandbox:
    """The sandbox for this worker; SandboxUnavailable (with what to do) when none can be made."""
    if settings.command_sandbox == "none":
        log.warning(UNSANDBOXED_WARNING)
        return UnsandboxedRunner()
    config = bubblewrap_config(settings)
    sandbox = BubblewrapSandbox(config)
    if config not in _proven:
        try:
            probe(sandbox)
        except SandboxUnavailable as exc:
            raise SandboxUnavailable(f"{exc}. forgecrew runs the agent's and the repository's commands only in a "
                                     "sandbox; fix the above, or set FORGECREW_COMMAND_SANDBOX=none to run them "
                                     "unconfined (never for repositories you do not trust)") from None
        _proven[config] = None
    return sandbox


def bubblewrap_config(settings: Settings) -> BubblewrapConfig:
    """What the bubblewrap sandbox needs from the settings; refuses a read-only path that would show our files."""
    hidden = protected_paths(settings)
    read_only = tuple(Path(os.path.realpath(path)) for path in settings.sandbox_read_only_paths)
    for path in read_only:
        exposed = [str(item) for item in hidden if item == path or path in item.parents]
        if exposed:
            raise SettingsError(f"FORGECREW_SANDBOX_READ_ONLY_PATHS: {path} holds {', '.join(exposed)}, which the "
                                "agent's commands must never see; name a directory inside it instead")
    run_as = (settings.sandbox_uid, settings.sandbox_gid) if os.geteuid() == 0 else None
    return BubblewrapConfig(run_as=run_as, nice=settings.sandbox_nice, read_only=read_only, hidden=hidden,
                            blocked_networks=tuple(settings.sandbox_blocked_networks))


def protected_paths(settings: Settings) -> tuple[Path, ...]:
    """The worker's own files: settings, state, workspaces, forge, home and virtualenv."""
    paths = [settings.workspace_root, settings.local_forge_root, Path.home()]
    named = config_file()
    if named is not None:
        paths.append(named)
    if settings.database_url.startswith("sqlite:///"):
        paths.append(Path(settings.database_url.removeprefix("sqlite:///")))
    if sys.prefix != sys.base_prefix:
        paths.append(Path(sys.prefix))
    return tuple(dict.fromkeys(Path(os.path.realpath(path)) for path in paths))


def make_undumpable() -> bool:
    """Forbid same-user processes to read this process's /proc files or ptrace it (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
