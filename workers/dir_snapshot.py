"""Which directories of a checkout can hold new files: those whose stat changed since a snapshot.

Publishing used `git add --all`, which opens every directory of the tree (6,000 at 100,000 files)
to look for untracked files. A name can only appear in a directory, vanish from it or be renamed
into it by changing that directory's entries, and every such change sets the directory's ctime to
the current time, which no unprivileged process can set back (`utime` moves mtime, and sets ctime
to now). So when the snapshot was taken of a checkout holding no untracked file (a fresh pool
entry), a new file's path always passes through a directory whose (inode, ctime) differs from the
snapshot, or through a directory the snapshot never saw; listing those directories finds every
new name. What changed inside tracked files is not this module's business: `git add --update`
still stats every tracked file.

A directory whose ctime is within `RACY_NS` of the snapshot's time is stored as "always list": a
change in the same clock tick could leave its ctime as it was.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

RACY_NS = 1_000_000_000
Stamp = tuple[int, int] | None  # (inode, ctime_ns); None: list it whatever its stat says


@dataclass
class DirSnapshot:
    """The stat of each tracked directory of a checkout (relative paths, "" for the top) at one commit."""

    commit: str
    dirs: dict[str, Stamp] = field(default_factory=dict)

    def mark_changed(self, paths: Iterable[str]) -> None:
        """Every directory on the way to `paths` is to be listed (the worker itself wrote there)."""
        for path in paths:
            parts = path.split("/")[:-1]
            self.dirs[""] = None
            for depth in range(1, len(parts) + 1):
                self.dirs["/".join(parts[:depth])] = None

    def save(self, path: Path) -> None:
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps({"commit": self.commit, "dirs": self.dirs}))
        os.replace(partial, path)

    @classmethod
    def load(cls, path: Path) -> DirSnapshot | None:
        """The snapshot saved at `path`, or None when there is none or it cannot be read."""
        try:
            data = json.loads(path.read_text())
            dirs = {str(name): (tuple(value) if value is not None else None) for name, value in data["dirs"].items()}
            return cls(str(data["commit"]), dirs)  # type: ignore[arg-type]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None


def take(checkout: Path, commit: str, dirs: Iterable[str]) -> DirSnapshot:
    """Stat `dirs` (the tree's directories, relative) and the top; the racy ones are always listed."""
    started = time.time_ns()
    snapshot = DirSnapshot(commit)
    for relative in ("", *dirs):
        try:
            info = os.lstat(checkout / relative)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(info.st_mode):
            racy = info.st_ctime_ns >= started - RACY_NS
            snapshot.dirs[relative] = None if racy else (info.st_ino, info.st_ctime_ns)
    return snapshot


def new_name_candidates(checkout: Path, snapshot: DirSnapshot) -> list[str]:
    """Paths that may be new since the snapshot: every entry of a changed directory but its known subdirectories.

    The caller hands them to git, which drops tracked and ignored ones and walks new directories.
    Directories reached through a symbolic link are never listed (nothing outside the checkout).
    """
    real = _RealDirs(checkout)
    candidates: list[str] = []
    for relative, stamp in snapshot.dirs.items():
        info = real.lstat_dir(relative)
        if info is None or (stamp is not None and (info.st_ino, info.st_ctime_ns) == tuple(stamp)):
            continue
        with os.scandir(checkout / relative) as entries:
            for entry in entries:
                child = f"{relative}/{entry.name}" if relative else entry.name
                if entry.name == ".git" or (child in snapshot.dirs and real.lstat_dir(child) is not None):
                    continue  # git never adds a .git; a known directory is checked on its own
                candidates.append(child)
    return sorted(candidates)


class _RealDirs:
    """lstat of directories whose every component is a real directory (no symbolic link), memoized."""

    def __init__(self, top: Path) -> None:
        self.top = top
        self.seen: dict[str, os.stat_result | None] = {}

    def lstat_dir(self, relative: str) -> os.stat_result | None:
        if relative in self.seen:
            return self.seen[relative]
        parent = relative.rpartition("/")[0] if relative else None
        info = None
        if parent is None or self.lstat_dir(parent) is not None:
            try:
                found = os.lstat(self.top / relative)
                info = found if stat.S_ISDIR(found.st_mode) else None
            except (FileNotFoundError, NotADirectoryError):
                info = None
        self.seen[relative] = info
        return info
