"""Read the files the worker itself takes from the repository, as the untrusted input they are.

`.forgecrew.yml`, AGENTS.md, CLAUDE.md, the README, package.json and the Makefile come from
whoever wrote the repository. The worker opens each one component by component with
O_NOFOLLOW (a symlink anywhere on the path is refused, so `.forgecrew.yml -> /etc/...` reads
nothing of the host), only as a regular file (O_NONBLOCK, so a FIFO cannot hang it), and never
reads past a size cap. Errors name the file, never its content.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from common.errors import ForgecrewError

FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class RepoFileRefused(ForgecrewError):
    """A repository file the worker reads is a link, not a regular file, or too large."""


def read_text(checkout: Path, relative: str, *, limit: int, truncate: bool = False) -> str | None:
    """The file's text (None when it does not exist); past `limit` bytes cut (truncate) or refused."""
    data = read_bytes(checkout, relative, limit=limit, truncate=truncate)
    return None if data is None else data.decode("utf-8", "replace")


def read_bytes(checkout: Path, relative: str, *, limit: int, truncate: bool = False) -> bytes | None:
    parts = [part for part in Path(relative).parts if part not in ("", ".")]
    if not parts or any(part == ".." for part in parts) or Path(relative).is_absolute():
        raise ValueError(f"not a path inside the repository: {relative!r}")
    fd = os.open(checkout, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    for index, part in enumerate(parts):
        fd = _step(fd, part, relative, 0 if index == len(parts) - 1 else os.O_DIRECTORY)
        if fd < 0:
            return None
    info = os.fstat(fd)  # before fdopen, which raises IsADirectoryError for a directory of that name
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise RepoFileRefused(f"{relative} in the repository is not a regular file; forgecrew does not read it")
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > limit and not truncate:
            raise RepoFileRefused(f"{relative} in the repository is {info.st_size} bytes; forgecrew reads it only "
                                  f"up to {limit} bytes")
        return handle.read(limit)


def _step(directory: int, name: str, relative: str, extra: int) -> int:
    """Open `name` under `directory` without following a link; -1 when it does not exist. Closes `directory`."""
    try:
        return os.open(name, FLAGS | extra, dir_fd=directory)
    except FileNotFoundError:
        return -1
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR) and _is_link(directory, name):
            raise RepoFileRefused(f"{relative} in the repository is (or lies under) a symbolic link; forgecrew reads "
                                  "only regular files there") from None
        if exc.errno == errno.ENOTDIR:  # a file where a directory was expected: not there
            return -1
        raise RepoFileRefused(f"{relative} in the repository cannot be read ({exc.strerror})") from None
    finally:
        os.close(directory)


def _is_link(directory: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode)
    except OSError:
        return False
