"""Run a forgecrew process as an unprivileged user from a test that runs as root (as CI does).

The user is a bare uid with no /etc/passwd entry, like a dedicated service account. It must be
able to run this interpreter and read this checkout: where a directory on the way is closed
to others (pyenv under /root, say), a root bubblewrap shows the process an empty tmpfs there
with only the needed paths bound back read-only. The process sees nothing else of that
directory, which is what a real service account would see.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

UID = 4242
REPO = Path(__file__).resolve().parents[1]


def needed_paths() -> list[Path]:
    """What a forgecrew process reads: the interpreter, its virtualenv and base install, and this code."""
    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)).parent, REPO}
    return sorted(path for path in paths if not any(other in path.parents for other in paths))


def closed_ancestor(path: Path) -> Path | None:
    """The first directory on the way to `path` that others may not search, or None."""
    for ancestor in [*reversed(path.parents), path]:
        if ancestor.is_dir() and not ancestor.stat().st_mode & stat.S_IXOTH:
            return ancestor
    return None


def prefix(uid: int = UID, *, home: Path) -> list[str]:
    """A command-line prefix that runs what follows as `uid` (and its group), with no capabilities."""
    masks = sorted({closed for path in needed_paths() if (closed := closed_ancestor(path)) is not None})
    # --cap-add ALL keeps the full capability bounding set that a user's process on a host has (bwrap run
    # as root would empty it); setpriv's change of uid still leaves the worker no capability at all
    args = [shutil.which("bwrap") or "bwrap", "--dev-bind", "/", "/", "--die-with-parent", "--cap-add", "ALL"]
    for mask in masks:
        args += ["--perms", "0755", "--tmpfs", str(mask)]
    for path in needed_paths():
        mask = next((mask for mask in masks if mask == path or mask in path.parents), None)
        if mask is None:
            continue
        for between in [*reversed(path.parents), path]:  # bwrap would make these 0700 itself
            if mask in between.parents:
                args += ["--perms", "0755", "--dir", str(between)]
        args += ["--ro-bind", str(path), str(path)]
    return args + ["--setenv", "HOME", str(home), "--", "setpriv", f"--reuid={uid}", f"--regid={uid}",
                   "--clear-groups", "--inh-caps=-all", "--"]


def owned_dir(prefix_name: str, uid: int = UID) -> Path:
    """A fresh directory under /tmp that belongs to `uid` (a pytest tmp_path is closed to it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix_name))
    os.chown(path, uid, uid)
    return path


def give(path: Path, uid: int = UID) -> None:
    """Hand a tree the test made (as root) to the unprivileged user, as an operator would."""
    subprocess.run(["chown", "-R", f"{uid}:{uid}", str(path)], check=True)
