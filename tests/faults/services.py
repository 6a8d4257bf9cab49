"""Services a fault test takes down and brings back: a private PostgreSQL, a tmpfs, git remotes' hooks.

The shared PostgreSQL and Redis of the test session are never stopped; a test that needs its
database or broker to die gets one of its own on a free loopback port.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from common import migrate
from common.settings import Settings
from tests.support import RedisServer, free_port, wait_for

__all__ = ["PUSH_LOG_HOOK", "PrivatePostgres", "RedisServer", "install_hook", "private_postgres", "tmpfs",
           "tmpfs_allowed"]

PG_USER = "nobody"  # initdb and postgres refuse root; nobody has the passwd entry initdb looks up


def _pg_bin(name: str) -> str:
    """A PostgreSQL server binary: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    assert versions, "no PostgreSQL server binaries (initdb, pg_ctl) on this host"
    return str(versions[-1] / name)


def _as_pg_user(args: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *args] if os.geteuid() == 0 else args


class PrivatePostgres:
    """A throwaway cluster on its own port with a migrated `forgecrew` database; stop() is the outage."""

    def __init__(self) -> None:
        # a pytest tmp_path is closed to other users, so the cluster lives in a directory of its own
        self.dir = Path(tempfile.mkdtemp(prefix="forgecrew-pg-"))
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, PG_USER)
        self.dir.chmod(0o755)
        self.data = self.dir / "data"
        subprocess.run(_as_pg_user([_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                                    "-N"]), check=True, capture_output=True, timeout=120)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/forgecrew"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(_as_pg_user([_pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                                    str(self.dir / "log"), "-w", "-t", "60", "start"]),
                       check=True, capture_output=True, timeout=90)
        wait_for(lambda: psycopg.connect(self.admin_url, connect_timeout=2).close() or True, timeout=30,
                 what="private PostgreSQL")

    def create(self) -> str:
        """Create and migrate the forgecrew database; its SQLAlchemy URL."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE forgecrew")
        migrate.upgrade(Settings(database_url=self.url))
        return self.url

    def stop(self) -> None:
        """An outage: immediate shutdown, every connection dropped, as when the host goes away."""
        subprocess.run(_as_pg_user([_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"]),
                       capture_output=True, timeout=60)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.start()
        server.create()
        yield server
    finally:
        server.remove()


@contextmanager
def tmpfs(path: Path, size: str = "20m") -> Iterator[Path]:
    """A small tmpfs mounted at `path` (root only), unmounted at the end whatever happened."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True,
                   capture_output=True, timeout=30)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def tmpfs_allowed() -> bool:
    """Whether this host lets the test mount a tmpfs (CI runs as root; a laptop may not)."""
    if os.geteuid() != 0:
        return False
    probe = Path(tempfile.mkdtemp(prefix="forgecrew-tmpfs-probe-"))
    try:
        with tmpfs(probe, "1m"):
            return True
    except subprocess.CalledProcessError:
        return False
    finally:
        probe.rmdir()


# A post-receive hook that appends "<ref> <old> <new>" per updated ref: every push the remote took.
PUSH_LOG_HOOK = """#!/bin/sh
while read old new ref; do echo "$ref $old $new" >> "{log}"; done
"""


def install_hook(bare_repo: Path, name: str, script: str) -> None:
    """An executable hook in a bare repository (the git remote the workers push to)."""
    hook = bare_repo / "hooks" / name
    hook.write_text(script)
    hook.chmod(0o755)
