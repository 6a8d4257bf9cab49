"""Checkouts kept ready per repository, so a task's checkout costs a rename, not a tree's worth of writes.

Writing every file of a large tree is what a task's checkout cost (about 4 s for 100,000 files
here, see docs/design-notes.md). A pool entry is a `git clone --shared` of the host's mirror with
the default branch's head checked out (detached), given to the sandbox's user when the worker is
root, and with its index refreshed after the tree was written, so every entry's stat data is
clean. A task takes one with one rename; moving it to the task's start commit then writes only
the files that differ (`git read-tree -m -u`). A background thread builds the next one while the
agent works. An entry is never given out twice and never returned: a used tree goes to trash.

Layout under the workspace root::

    pool/<owner>/<repo>/<uid>/ready-<random>/     a ready checkout (its .git borrows the mirror's objects)
    pool/<owner>/<repo>/<uid>/partial-<random>/   being built (a dead builder's is removed by the next)
    pool/<owner>/<repo>/<uid>.lock                held by the one process refilling that pool
    trash/<name>-<random>/                        trees waiting to be deleted in the background

`<uid>` is the owner the entry's files were given to ("self" when the worker is not root), so a
worker never takes an entry made for another sandbox user.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from common.gitsafe import HARDENING, base_env, checkout_config, config_text, run_git, write_config
from workers import dir_snapshot

log = logging.getLogger(__name__)
Owner = tuple[int, int] | None
SNAPSHOT_NAME = "forgecrew-clean-dirs.json"  # in a ready entry's .git; moved out before any agent runs


class CheckoutPool:
    """Ready checkouts of each repository's default branch, `size` of them per repository and owner."""

    def __init__(self, root: Path, size: int) -> None:
        self.root = Path(root) / "pool"
        self.trash = Path(root) / "trash"
        self.size = size
        self.background: list[threading.Thread] = []

    def wait(self, timeout: float | None = None) -> None:
        """Until this process's background refills and trash deletions are done (tests, benchmarks)."""
        for thread in list(self.background):
            thread.join(timeout)
        self.background = [thread for thread in self.background if thread.is_alive()]

    def slot(self, repo: str, owner: Owner) -> Path:
        return self.root / (f"{owner[0]}-{owner[1]}" if owner else "self") / repo

    def take(self, repo: str, owner: Owner, dest: Path) -> bool:
        """Move a ready checkout to `dest` (absent, same filesystem); False when none is ready."""
        slot = self.slot(repo, owner)
        try:
            ready = sorted(entry for entry in os.listdir(slot) if entry.startswith("ready-"))
        except FileNotFoundError:
            return False
        for name in ready:
            try:
                os.rename(slot / name, dest)  # atomic: of two takers, one gets it
                return True
            except FileNotFoundError:
                continue
        return False

    def refill(self, repo: str, mirror: Path, clone_url: str, owner: Owner) -> int:
        """Build entries until `size` are ready; returns how many it built (0 when another process refills)."""
        slot = self.slot(repo, owner)
        slot.mkdir(parents=True, exist_ok=True)
        from workers.workspace import _locked  # the one flock helper

        with _locked(slot.with_name(slot.name + ".lock"), exclusive=True, blocking=False) as free:
            if not free:
                return 0
            for stale in (entry for entry in os.listdir(slot) if entry.startswith("partial-")):
                self.discard(slot / stale)  # its builder died: we hold the lock
            built = 0
            while len([entry for entry in os.listdir(slot) if entry.startswith("ready-")]) < self.size:
                token = secrets.token_hex(6)
                partial = slot / f"partial-{token}"
                build_checkout(mirror, partial, clone_url, owner, settle=True)
                os.rename(partial, slot / f"ready-{token}")
                built += 1
            return built

    def refill_in_background(self, repo: str, mirror: Path, clone_url: str, owner: Owner) -> threading.Thread:
        """Refill (then empty the trash) in a daemon thread; failures are logged, the next take builds inline."""
        def work() -> None:
            try:
                self.refill(repo, mirror, clone_url, owner)
            except Exception:  # noqa: BLE001 - a background convenience: never the task's failure
                log.exception("could not refill the checkout pool of %s", repo)
            self.empty_trash()

        thread = threading.Thread(target=work, name=f"forgecrew-pool-{repo}", daemon=True)
        thread.start()
        self.background = [*(alive for alive in self.background if alive.is_alive()), thread]
        return thread

    def drop_idle(self, before: datetime) -> list[Path]:
        """Trash ready checkouts made before `before`: a repository no task used since then keeps no tree."""
        dropped = []
        for entry in self.root.glob("*/*/*/ready-*"):
            try:
                if datetime.fromtimestamp(entry.stat().st_mtime, timezone.utc) < before:
                    self.discard(entry)
                    dropped.append(entry)
            except FileNotFoundError:  # taken meanwhile
                continue
        return dropped

    def discard(self, path: Path) -> Path | None:
        """Move a tree into the trash (one rename, so no caller waits for its deletion)."""
        if not (path.exists() or path.is_symlink()):
            return None
        self.trash.mkdir(parents=True, exist_ok=True)
        target = self.trash / f"{path.name}-{secrets.token_hex(6)}"
        try:
            os.rename(path, target)
        except PermissionError:  # a directory without write permission cannot change its `..`
            if not path.is_dir() or path.is_symlink():
                raise
            os.chmod(path, 0o700)
            os.rename(path, target)
        return target

    def empty_trash(self) -> int:
        """Delete what the trash holds, one tree at a time; safe to run in several processes at once."""
        from workers.workspace import _force_rmtree

        removed = 0
        try:
            entries = os.listdir(self.trash)
        except FileNotFoundError:
            return 0
        for name in entries:
            claimed = self.trash / (name if name.startswith("deleting-") else f"deleting-{name}")
            try:
                if name.startswith("deleting-"):  # another deleter's, unless it died over an hour ago
                    if time.time() - os.lstat(claimed).st_mtime < 3600:
                        continue
                    os.utime(claimed, follow_symlinks=False)
                else:
                    os.rename(self.trash / name, claimed)  # one deleter per tree
                    os.utime(claimed, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if claimed.is_dir() and not claimed.is_symlink():
                _force_rmtree(claimed)
            else:
                claimed.unlink()
            removed += 1
        return removed


def build_checkout(mirror: Path, dest: Path, clone_url: str, owner: Owner, *, settle: bool = False) -> str:
    """A shared clone of `mirror` with its HEAD checked out detached at `dest`; returns the commit.

    With `settle`, waits for the clock to pass the index's second and refreshes the index, so no
    entry is "racily clean" and publishing later hashes only the files a task changed.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    as_owner = owner if owner and _searchable(mirror, dest.parent) else None
    if as_owner:  # the files are the sandbox user's from the start: no chown, so no stat data to redo
        dest.mkdir()
        os.chown(dest, *as_owner)
    with _Git(as_owner, mirror, background=settle) as git:
        git(dest.parent, "clone", "--quiet", "--shared", "--no-checkout", str(mirror), str(dest))
        write_config(dest / ".git", checkout_config(clone_url))
        if as_owner:
            os.chown(dest / ".git" / "config", *as_owner)
        sha = git(dest, "rev-parse", "--verify", "HEAD^{commit}").strip()
        git(dest, "checkout", "--quiet", "--detach", sha)
        if owner and not as_owner:
            give(dest, owner)  # changes every file's ctime: the refresh below then reads every file once
        if settle:  # off the task's path only: a checkout built for a waiting task is given as it is
            written = max(time.time(), (dest / ".git" / "index").stat().st_mtime)  # the last write to the tree
            time.sleep(max(0.0, 1.05 - (time.time() - written)))
            git(dest, "update-index", "-q", "--refresh", check=False)
            if owner:
                give(dest / ".git", owner)
            dirs = git(dest, "ls-tree", "-r", "-d", "-z", "--name-only", sha).split("\0")
            dir_snapshot.take(dest, sha, [name for name in dirs if name]).save(dest / ".git" / SNAPSHOT_NAME)
    return sha


def move_snapshot(checkout: Path, built_at: str, start: str, written: list[str], target: Path) -> None:
    """Move the entry's directory snapshot out of the agent's reach to `target`, for the task's start commit.

    `written`: the paths moving from `built_at` to `start` wrote, whose directories publishing must list.
    Without a snapshot of `built_at` (an entry built inline), `target` is left absent and publishing
    lists every directory, as before.
    """
    source = checkout / ".git" / SNAPSHOT_NAME
    snapshot = dir_snapshot.DirSnapshot.load(source)
    source.unlink(missing_ok=True)
    target.unlink(missing_ok=True)
    if snapshot is None or snapshot.commit != built_at:
        return
    snapshot.mark_changed(written)
    snapshot.commit = start
    snapshot.save(target)


class _Git:
    """The worker's git for building a checkout: as the sandbox's user when given one (through setpriv)."""

    def __init__(self, owner: Owner, mirror: Path, *, background: bool = False) -> None:
        self.prefix = (["setpriv", f"--reuid={owner[0]}", f"--regid={owner[1]}", "--clear-groups", "--"]
                       if owner else [])
        if background:  # a refill yields the CPU and the disk to the tasks running meanwhile
            idle = ["ionice", "-c", "3"] if shutil.which("ionice") else []
            self.prefix = [*idle, "nice", "-n", "19", *self.prefix]
        self.env = base_env()
        self.trust: str | None = None
        if owner:  # the mirror is root's: a "global" config saying it is trusted, since git drops -c for
            # the upload-pack a local clone starts (GIT_CONFIG_PARAMETERS is cleared for local transports)
            handle, self.trust = tempfile.mkstemp(prefix="forgecrew-trust-", suffix=".gitconfig")
            with os.fdopen(handle, "w") as out:
                out.write(config_text([("safe.directory", str(mirror))]))
            os.chmod(self.trust, 0o644)
            self.env["GIT_CONFIG_GLOBAL"] = self.trust

    def __enter__(self) -> _Git:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.trust:
            os.unlink(self.trust)

    def __call__(self, cwd: Path, *args: str, check: bool = True) -> str:
        from workers.workspace import GitFailed

        command = ["git", *HARDENING, "-c", f"safe.directory={cwd}", *args]
        result = subprocess.run([*self.prefix, *command], cwd=cwd, env=self.env, capture_output=True, text=True,
                                stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise GitFailed(f"git {args[0]} failed in {cwd}: {result.stderr.strip()[:500]}")
        return result.stdout


def _searchable(*paths: Path) -> bool:
    """Whether any user may reach `paths` (every directory on the way open to others): else chown after."""
    for path in paths:
        for directory in [*reversed(Path(path).absolute().parents), Path(path).absolute()]:
            try:
                if not os.stat(directory).st_mode & stat.S_IXOTH:
                    return False
            except FileNotFoundError:
                return False
    return True


def git_in(checkout: Path, *args: str, check: bool = True) -> str:
    """The worker's git in a checkout it made and no agent has touched yet (owned by the sandbox user)."""
    from workers.workspace import GitFailed

    result = run_git(["-c", f"safe.directory={checkout}", *args], checkout)
    if check and result.returncode != 0:
        raise GitFailed(f"git {args[0]} failed in {checkout}: {result.stderr.strip()[:500]}")
    return result.stdout


def give(top: Path, owner: tuple[int, int], paths: list[str] | None = None) -> None:
    """Chown `top`'s tree (or only `paths` under it, with their directories) to `owner`, never following links."""
    uid, gid = owner
    if paths is None:
        os.chown(top, uid, gid, follow_symlinks=False)
        for root, dirs, files in os.walk(top):
            for name in (*dirs, *files):
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
        return
    done: set[str] = set()
    for relative in paths:
        parts = relative.split("/")
        for depth in range(1, len(parts) + 1):
            partial = "/".join(parts[:depth])
            if partial in done:
                continue
            done.add(partial)
            try:
                os.chown(top / partial, uid, gid, follow_symlinks=False)
            except FileNotFoundError:  # deleted by the move
                break
