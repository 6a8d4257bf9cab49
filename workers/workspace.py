"""Per-task workspaces: one bare mirror per repository on the host, one isolated checkout per task.

Layout under the workspace root::

    mirrors/<owner>/<repo>.git        bare mirror, fetched under mirrors/<owner>/<repo>.git.lock
    tasks/<task-id>/repo/             the agent's checkout, on the task's branch
    tasks/<task-id>/metadata.json     task id, repo, branch, base, times, state
    tasks/<task-id>/transcript.jsonl  written by the agent loop
    tasks/<task-id>/home, tmp/        HOME and TMPDIR of the agent's commands

Why `git clone --shared` from the mirror and not `git worktree add`: bench/workspace_bench.py
(2,000 files, 200 commits, 5.9 MB packed; 2 busy cores) measured both at 0.43-0.94x the time and
0.75x the disk of a full clone, within 0.05x of each other in every run; with 1,500 commits
(32 MB) both fell to about 0.55x the time and 0.35x the disk. Writing the checkout's files
dominates both, so at equal cost isolation decides. A shared clone has its own config, refs,
index, hooks and `origin`, so the agent's ordinary git commands stay in its checkout, and
deleting its directory needs no `git worktree prune`. A worktree shares the mirror's config and
refs: the mirror's pruning fetch would delete task branches, and `git push` in it would use the
mirror's remote. The one coupling left, objects borrowed through objects/info/alternates, is
made safe by never pruning the mirror (gc.auto=0, gc.pruneExpire=never).

Credentials never touch the disk: URLs are stored without them, and the forge's credential
reaches only the git command that fetches the mirror, through common.gitsafe's helper.

The agent's commands run in a sandbox that sees the checkout (and the mirror's objects,
read-only) but no mirror, no other task and nothing of this directory besides its own home and
tmp. After `prepare` the worker never runs git in the checkout's .git again: what it publishes
is built in a private repository of its own (workers/change.py).

With a pool (`pool_size` > 0, the worker's default) the checkout is not written per task: a ready
one is taken with a rename and moved to the task's start commit, touching only the files that
differ, and its stat-clean index is kept out of the agent's reach so publishing hashes only what
the task changed (workers/checkout_pool.py). Old trees go to a trash directory with one rename and
are deleted in the background, so neither gc nor a retry's leftovers stall a checkout.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import stat
import subprocess
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from common.errors import ForgecrewError
from common.gitsafe import GitCredential, checkout_config, mirror_config, run_git, write_config
from workers.checkout_pool import CheckoutPool, Owner, build_checkout, git_in, give, move_snapshot

MIRROR_CONFIG = (("gc.auto", "0"), ("gc.pruneExpire", "never"), ("maintenance.auto", "false"))
RUNNING = "running"
_REPO_NAME = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


class CloneFailed(ForgecrewError):
    """The repository could not be cloned or fetched; the message names the URL and git's error."""


class GitFailed(ForgecrewError):
    """A local git command in a workspace failed; the message carries git's error."""


class WorkspaceBusy(ForgecrewError):
    """Another run on this host still holds the task's directory (a run whose lease was taken over)."""


# How long a run waits for an earlier run on this host to let go of the task's directory: a stale
# run stops at its next step once its lease is gone, so this is generous; past it the task fails
# with a reason instead of stalling the worker's slot for ever behind a hung run.
HOLD_WAIT_SECONDS = 300.0


def scrub(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """Remove URL userinfo and every known secret so a message can be logged or shown."""
    text = _USERINFO.sub(r"\1***@", text)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _git(args: list[str], cwd: Path | None = None, credential: GitCredential | None = None,
         extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_git(args, cwd, env=extra_env, credential=credential)


def _git_ok(args: list[str], cwd: Path, **kwargs: Any) -> str:
    """Run a local git command that must succeed and return its stdout."""
    result = _git(args, cwd, **kwargs)
    if result.returncode != 0:
        raise GitFailed(f"git {' '.join(args[:2])} failed in {cwd}: {scrub(result.stderr.strip())}")
    return result.stdout


@contextmanager
def _locked(lock_path: Path, *, exclusive: bool, blocking: bool = True) -> Iterator[bool]:
    """Hold an flock (beside a mirror, or for a task's run); yields False if busy and not blocking."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(handle, mode)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _refuse_credentials(url: str) -> None:
    parts = urlsplit(url)
    if parts.password or (parts.scheme in ("http", "https") and parts.username):
        raise CloneFailed(f"clone URL {scrub(url)} carries a credential; the forge passes credentials to git itself")


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _force_rmtree(path: Path) -> None:
    """Delete a tree even when tools left read-only files in it (Go and npm caches do)."""
    def retry_writable(func: Any, target: str, _exc: Any) -> None:
        os.chmod(os.path.dirname(target), stat.S_IRWXU)
        if os.path.lexists(target) and not os.path.islink(target):
            os.chmod(target, stat.S_IRWXU)
        func(target)

    if path.exists() or path.is_symlink():
        shutil.rmtree(path, onerror=retry_writable)


def branch_name(issue_number: int | None, title: str, *, task_id: int | None = None) -> str:
    """A readable, ref-safe branch name: forgecrew/issue-<n>-<slug> or forgecrew/run-<id>-<slug>."""
    if issue_number is None and task_id is None:
        raise ValueError("branch_name needs an issue number or a task id")
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_title.lower()).strip("-")
    if len(slug) > 40:
        slug = slug[:41].rsplit("-", 1)[0] if "-" in slug[:41] else slug[:40]
    stem = f"issue-{issue_number}" if issue_number is not None else f"run-{task_id}"
    return f"forgecrew/{stem}-{slug}" if slug else f"forgecrew/{stem}"


@dataclass
class Workspace:
    """One task's directory; the metadata file is the record gc and operators read."""

    task_id: int
    path: Path
    checkout: Path
    branch: str
    base_branch: str
    head_sha: str
    metadata_path: Path
    transcript_path: Path
    repo: str = ""
    clone_url: str = ""
    base_sha: str = ""
    remote_branch_sha: str | None = None
    mirror: Path | None = None  # whose objects the checkout borrows
    clean_index_sha: str = ""  # the commit clean.index (stat data of the untouched checkout) describes

    @property
    def clean_index(self) -> Path:
        """The checkout's index as the worker made it, before the agent ran: publishing's stat cache."""
        return self.path / "clean.index"

    @property
    def clean_dirs(self) -> Path:
        """The stat of the untouched checkout's directories (workers/dir_snapshot.py), beside clean.index."""
        return self.path / "clean.dirs"

    @property
    def home(self) -> Path:
        return self.path / "home"

    @property
    def tmp(self) -> Path:
        return self.path / "tmp"

    @property
    def publish_dir(self) -> Path:
        """The worker's private git directory, where it builds what it pushes (never visible to the agent)."""
        return self.path / "publish.git"

    def read_metadata(self) -> dict[str, Any]:
        return json.loads(self.metadata_path.read_text())

    def update_metadata(self, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into metadata.json atomically, so a crash never leaves half a file."""
        data = self.read_metadata() if self.metadata_path.exists() else {}
        data.update(fields)
        partial = self.metadata_path.with_suffix(".json.partial")
        partial.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(partial, self.metadata_path)
        return data

    def record_push(self, sha: str) -> None:
        """The branch on the forge is now at `sha`: the lease for the next push."""
        self.remote_branch_sha = sha
        self.update_metadata(remote_branch_sha=sha, pushed_at=_utcnow().isoformat())

    def mark_finished(self, state: str = "finished", *, now: datetime | None = None) -> None:
        """Record the end of the run; from then on gc may remove the directory after retention."""
        self.update_metadata(state=state, finished_at=(now or _utcnow()).isoformat())


class WorkspaceManager:
    """Creates, reopens and garbage-collects task workspaces under one root."""

    def __init__(self, root: Path, *, pool_size: int = 0) -> None:
        self.root = Path(root).absolute()
        self.mirrors = self.root / "mirrors"
        self.tasks = self.root / "tasks"
        self.pool = CheckoutPool(self.root, pool_size)

    def mirror_path(self, repo: str) -> Path:
        if not _REPO_NAME.match(repo) or ".." in repo:
            raise ValueError(f"repository must be owner/name, got {repo!r}")
        return self.mirrors / f"{repo}.git"

    def task_dir(self, task_id: int) -> Path:
        return self.tasks / str(int(task_id))

    def remove(self, task_id: int) -> None:
        """Delete a task's directory now (its run filled the disk), whatever its age."""
        if self.task_dir(task_id).exists():
            _force_rmtree(self.task_dir(task_id))

    def prepare(self, task_id: int, repo: str, clone_url: str, branch: str, *,
                credential: GitCredential | None = None, base: str | None = None,
                start_from_branch: bool = False, owner: Owner = None) -> Workspace:
        """Fetch the mirror, then give the task a fresh checkout on `branch` (replacing any old one).

        `owner` (uid, gid): who the checkout's files must belong to (the sandbox's user of a root worker).
        """
        _refuse_credentials(clone_url)
        if _git(["check-ref-format", "--branch", branch]).returncode != 0:
            raise ValueError(f"not a valid branch name: {branch!r}")
        mirror = self.mirror_path(repo)
        self._update_mirror(mirror, clone_url, credential)
        task_dir = self.task_dir(task_id)
        leftovers = ("repo", "home", "tmp", "publish.git", "clean.index", "clean.dirs")  # earlier transcripts stay
        for leftover in leftovers:
            if self.pool.size:
                self.pool.discard(task_dir / leftover)
            else:
                _force_rmtree(task_dir / leftover)
        (task_dir / "home").mkdir(parents=True)
        (task_dir / "tmp").mkdir()
        checkout = task_dir / "repo"
        if self.pool.size:
            workspace = self._from_pool(task_id, repo, clone_url, mirror, checkout, branch, base, start_from_branch,
                                        owner)
            self.pool.refill_in_background(repo, mirror, clone_url, owner)
            return workspace
        with _locked(_lock_path(mirror), exclusive=False):
            base = base or _git_ok(["symbolic-ref", "--short", "HEAD"], mirror).strip()
            _git_ok(["clone", "--quiet", "--shared", "--no-checkout", str(mirror), str(checkout)], task_dir)
        write_config(checkout / ".git", checkout_config(clone_url))
        workspace = self._start_branch(task_id, repo, clone_url, checkout, branch, base, start_from_branch)
        workspace.mirror = mirror
        return workspace

    @contextmanager
    def hold(self, task_id: int, wait: float = HOLD_WAIT_SECONDS) -> Iterator[None]:
        """Mark the task's directory as in use for as long as this process runs it; gc skips it.

        Raises WorkspaceBusy when another run on this host still holds it after `wait` seconds.
        """
        deadline = time.monotonic() + wait
        while True:
            with _locked(self._hold_path(task_id), exclusive=True, blocking=False) as held:
                if held:
                    yield
                    return
            if time.monotonic() >= deadline:
                raise WorkspaceBusy(f"task {task_id}: its workspace {self.task_dir(task_id)} is still held by "
                                    f"another run on this host after {wait:g}s (an earlier run whose lease "
                                    "was taken over has not stopped); retry the task once that run ends")
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0.01)))

    def _hold_path(self, task_id: int) -> Path:
        return self.tasks / f"{int(task_id)}.lock"

    def load(self, task_id: int) -> Workspace:
        """Reopen a prepared workspace from its metadata (e.g. in the publishing step)."""
        task_dir = self.task_dir(task_id)
        meta = json.loads((task_dir / "metadata.json").read_text())
        workspace = _workspace(task_dir, meta)
        workspace.mirror = self.mirror_path(workspace.repo) if workspace.repo else None
        return workspace

    def gc(self, retention: timedelta, active_task_ids: set[int], now: datetime | None = None,
           progress: Callable[[int, int], None] | None = None) -> list[Path]:
        """Remove task directories idle past `retention`; never one active in the database or held.

        The database and the run's lock decide, not metadata.json: a worker that died mid-run left
        "running" there, and its directory must go once the task ended or moved elsewhere.
        `progress(n, total)` is called as the n-th entry is examined, for a long run's progress display.
        """
        now = now or _utcnow()
        removed = []
        entries = sorted(self.tasks.iterdir()) if self.tasks.is_dir() else []
        for done, entry in enumerate(entries, 1):
            if progress:
                progress(done, len(entries))
            if not entry.is_dir() or not entry.name.isdigit() or int(entry.name) in active_task_ids:
                continue
            with _locked(self._hold_path(int(entry.name)), exclusive=True, blocking=False) as free:
                if not free:
                    continue
                if now - _last_activity(entry) >= retention:
                    self.pool.discard(entry)  # one rename; a checkout never waits on the deletion
                    self._hold_path(int(entry.name)).unlink(missing_ok=True)
                    removed.append(entry)
        self.pool.drop_idle(now - retention)
        self.pool.empty_trash()
        return removed

    def _update_mirror(self, mirror: Path, clone_url: str, credential: GitCredential | None) -> None:
        """Create the mirror on first use, else fetch it; both under the exclusive lock."""
        with _locked(_lock_path(mirror), exclusive=True):
            if (mirror / "HEAD").is_file():
                write_config(mirror, mirror_config(clone_url, MIRROR_CONFIG))  # whatever a task wrote there
                os.chmod(mirror / "config", 0o644)  # no secret in it; the pool builds as the sandbox's user
                _remote(["fetch", "--quiet", "--prune", "--prune-tags", "origin"], mirror, clone_url, credential)
                return
            partial = mirror.with_name(mirror.name + ".partial")
            _force_rmtree(partial)
            _force_rmtree(mirror)
            partial.parent.mkdir(parents=True, exist_ok=True)
            _remote(["clone", "--quiet", "--bare", clone_url, str(partial)], partial.parent, clone_url, credential)
            write_config(partial, mirror_config(clone_url, MIRROR_CONFIG))
            os.chmod(partial / "config", 0o644)
            partial.rename(mirror)

    def _from_pool(self, task_id: int, repo: str, clone_url: str, mirror: Path, checkout: Path, branch: str,
                   base: str | None, start_from_branch: bool, owner: Owner) -> Workspace:
        """Take a ready checkout (or build one now), then move it to the start commit: only changed files are written."""
        with _locked(_lock_path(mirror), exclusive=False):
            base = base or _git_ok(["symbolic-ref", "--short", "HEAD"], mirror).strip()
            taken = self.pool.take(repo, owner, checkout)
            if taken:
                write_config(checkout / ".git", checkout_config(clone_url))  # today's URL, not the refill's
            else:
                build_checkout(mirror, checkout, clone_url, owner)
            try:
                git_in(checkout, "fetch", "--quiet", "--prune", str(mirror),
                       "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*")
            except GitFailed:
                if not taken:
                    raise
                self.pool.discard(checkout)  # e.g. made before its mirror was cloned afresh: build one now
                build_checkout(mirror, checkout, clone_url, owner)
                git_in(checkout, "fetch", "--quiet", "--prune", str(mirror),
                       "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*")
        remote_branch = _rev(checkout, f"refs/remotes/origin/{branch}")
        base_sha = _rev(checkout, f"refs/remotes/origin/{base}")
        if base_sha is None:
            raise CloneFailed(f"{scrub(clone_url)} has no branch {base!r} to start from")
        start = remote_branch if start_from_branch and remote_branch else base_sha
        current = git_in(checkout, "rev-parse", "HEAD").strip()
        changed: list[str] = []
        if current != start:
            names = git_in(checkout, "diff-tree", "-r", "-z", "--no-renames", "--name-only", current, start)
            changed = [name for name in names.split("\0") if name]
            if not taken:  # built just now (and chowned): stat data is stale, and read-tree -m refuses such entries
                git_in(checkout, "update-index", "-q", "--refresh", check=False)
            git_in(checkout, "read-tree", "-m", "-u", current, start)
        git_in(checkout, "update-ref", f"refs/heads/{branch}", start)
        git_in(checkout, "symbolic-ref", "HEAD", f"refs/heads/{branch}")
        if owner:
            give(checkout, owner, changed)
            give(checkout / ".git", owner)
        move_snapshot(checkout, current, start, changed, checkout.parent / "clean.dirs")
        # copy2 keeps the index file's mtime: git rechecks the content of entries as new as it ("racily clean")
        shutil.copy2(checkout / ".git" / "index", checkout.parent / "clean.index")
        meta = {
            "task_id": int(task_id), "repo": repo, "clone_url": clone_url, "branch": branch,
            "base_branch": base, "base_sha": base_sha, "head_sha": start, "clean_index_sha": start,
            "remote_branch_sha": remote_branch, "created_at": _utcnow().isoformat(),
            "finished_at": None, "state": RUNNING,
        }
        workspace = _workspace(checkout.parent, meta)
        workspace.update_metadata(**meta)
        workspace.mirror = mirror
        return workspace

    def _start_branch(self, task_id: int, repo: str, clone_url: str, checkout: Path, branch: str,
                      base: str, start_from_branch: bool) -> Workspace:
        remote_branch = _rev(checkout, f"refs/remotes/origin/{branch}")
        base_sha = _rev(checkout, f"refs/remotes/origin/{base}")
        if base_sha is None:
            raise CloneFailed(f"{scrub(clone_url)} has no branch {base!r} to start from")
        start = f"origin/{branch}" if start_from_branch and remote_branch else f"origin/{base}"
        _git_ok(["checkout", "--quiet", "--no-track", "-b", branch, start], checkout)
        meta = {
            "task_id": int(task_id), "repo": repo, "clone_url": clone_url, "branch": branch,
            "base_branch": base, "base_sha": base_sha, "head_sha": _rev(checkout, "HEAD"),
            "remote_branch_sha": remote_branch, "created_at": _utcnow().isoformat(),
            "finished_at": None, "state": RUNNING,
        }
        workspace = _workspace(checkout.parent, meta)
        workspace.update_metadata(**meta)
        return workspace


def _lock_path(mirror: Path) -> Path:
    return mirror.with_name(mirror.name + ".lock")


def _remote(args: list[str], cwd: Path, url: str, credential: GitCredential | None) -> None:
    """Run a git command that talks to the forge; failures become CloneFailed naming the URL."""
    result = _git(args, cwd, credential=credential)
    if result.returncode != 0:
        detail = scrub(result.stderr.strip(), [credential.password] if credential else [])
        raise CloneFailed(f"git {args[0]} of {scrub(url)} failed: {detail}")


def _rev(checkout: Path, ref: str) -> str | None:
    result = _git(["-c", f"safe.directory={checkout}", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                  checkout)
    return result.stdout.strip() if result.returncode == 0 else None


def _last_activity(task_dir: Path) -> datetime:
    """When the directory was last used: the recorded end of its run, else its newest mtime."""
    ended = _parse_time(_read_json(task_dir / "metadata.json").get("finished_at"))
    if ended is not None:
        return ended
    times = [task_dir.stat().st_mtime] + [p.stat().st_mtime for p in task_dir.iterdir() if not p.is_symlink()]
    return datetime.fromtimestamp(max(times), timezone.utc)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _workspace(task_dir: Path, meta: dict[str, Any]) -> Workspace:
    return Workspace(
        task_id=int(meta["task_id"]), path=task_dir, checkout=task_dir / "repo", branch=meta["branch"],
        base_branch=meta["base_branch"], head_sha=meta["head_sha"],
        metadata_path=task_dir / "metadata.json", transcript_path=task_dir / "transcript.jsonl",
        repo=meta.get("repo", ""), clone_url=meta.get("clone_url", ""), base_sha=meta.get("base_sha", ""),
        remote_branch_sha=meta.get("remote_branch_sha"), clean_index_sha=meta.get("clean_index_sha", ""),
    )
