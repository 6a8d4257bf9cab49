"""The change forgecrew publishes, built by the worker itself from the files of the checkout.

The agent's commits, index, refs and object store are not trusted: it could have committed a
token, planted objects, or rewritten history. The worker ignores all of it. In a private git
directory next to the checkout (never visible to the sandbox), with its own index and object
store borrowing only the host mirror's objects, it stages the checkout's files over the
commit the run started from, writes the tree, and scans everything that differs from that
commit (with the stat data of the untouched checkout, when the worker kept it, so only changed
files are read): refused paths (.env, keys, credentials), links leading out of the repository, nested
repositories, oversized files, configured secrets and known token shapes in added lines. A
change that trips the scan is refused, naming the file and never quoting the secret. Only
then is the commit made, as the bot identity, with the run's commit as its only parent.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import posixpath
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from common.errors import ForgecrewError
from common.gitsafe import base_env, run_git, write_config
from common.redact import TOKEN_PATTERNS
from workers.dir_snapshot import DirSnapshot, new_name_candidates
from workers.workspace import GitFailed, Workspace

DENIED_PATTERNS = (".env", ".env.*", "*.pem", "*.key", "id_rsa*", "id_ed25519*", "id_ecdsa*", "id_dsa*",
                   ".netrc", ".git-credentials", ".pypirc", ".npmrc", "credentials.json")
TEMPLATE_SUFFIXES = (".example", ".sample", ".template", ".dist")
MAX_FILE_BYTES = 50 * 1024 * 1024
LINK_MODE, GITLINK_MODE = "120000", "160000"
MAX_CANDIDATES = 5000  # more new names than this: one walk of the tree is cheaper than matching them all
MAX_PATHSPEC_BYTES = 512 * 1024  # paths go on git's command line: well within the kernel's limit
log = logging.getLogger(__name__)


class ChangeRefused(ForgecrewError):
    """The change holds something forgecrew never publishes; nothing was committed or pushed."""


@dataclass(frozen=True)
class Entry:
    path: str
    status: str  # A, M, D, T
    mode: str  # the new mode ("000000" when deleted)
    blob: str  # the new blob
    old_blob: str


@dataclass(frozen=True)
class Change:
    commit: str
    parent: str
    files: list[str]  # every path the branch changes against the base branch, deleted ones included
    git_dir: Path  # where the commit lives (the worker's private repository)


def build_change(workspace: Workspace, message: str, *, author: tuple[str, str],
                 contains_secret: Callable[[str], bool]) -> Change | None:
    """The worker's own commit of the checkout's files over the run's start; None when nothing changed."""
    git = _PrivateGit(workspace)
    parent = workspace.head_sha
    if workspace.clean_index_sha == parent and workspace.clean_index.is_file():
        # the checkout's stat data from before the agent ran: `add` hashes only files whose stat changed
        # (ctime included, which no process can set back), and the tree still comes from this index alone
        shutil.copy2(workspace.clean_index, git.git_dir / "index")  # its mtime too: racy-git checks need it
        _stage_changes(git, workspace, DirSnapshot.load(workspace.clean_dirs))
    else:
        git.ok("read-tree", parent)
        git.ok("add", "--all", "--", ".")
    tree = git.ok("write-tree").strip()
    if tree == git.ok("rev-parse", f"{parent}^{{tree}}").strip():
        return None
    entries = list(_entries(git.ok("diff-tree", "-r", "-z", "--no-renames", "--raw", parent, tree)))
    problems = _refused_paths(entries) + _refused_content(git, entries, contains_secret)
    if problems:
        raise ChangeRefused("forgecrew did not publish the change: " + "; ".join(problems[:10])
                            + (f"; and {len(problems) - 10} more" if len(problems) > 10 else ""))
    name, email = author
    identity = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
                "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}
    commit = git.ok("commit-tree", tree, "-p", parent, "-m", message, env=identity).strip()
    git.ok("update-ref", f"refs/heads/{workspace.branch}", commit)  # a ref, so any git can fetch it
    (git.git_dir / "index").unlink(missing_ok=True)  # scratch: the next build starts again from clean.index
    base = workspace.base_sha or parent
    files = git.ok("diff-tree", "-r", "-z", "--no-renames", "--name-only", base, tree).split("\0")
    return Change(commit, parent, sorted(path for path in files if path), git.git_dir)


def _stage_changes(git: _PrivateGit, workspace: Workspace, snapshot: DirSnapshot | None) -> None:
    """Stage the checkout over clean.index, telling git which paths changed instead of walking the tree.

    Measured at 100,000 files, `git add --all` spent about half its time opening every directory for
    untracked files. `diff-files` still stats every tracked file (edits, deletions, modes, files
    turned into links; no index write), new files can only be under directories the snapshot saw
    change or never saw (workers/dir_snapshot.py), and one `update-index` stages both. Without a
    snapshot of this commit, or whenever the short cut meets a case it does not handle as `add` would,
    the whole tree is walked as before.
    """
    paths = None
    if snapshot is not None and snapshot.commit == workspace.clean_index_sha:
        try:
            paths = _changed_paths(git, workspace.checkout, snapshot)
            if paths is not None:
                git.with_paths("update-index", "--add", "--remove", "--replace", paths=paths)
        except (GitFailed, OSError) as exc:  # e.g. a directory the agent made unreadable, a nested repository
            log.warning("staging only the changed paths failed, walking the whole checkout: %s", exc)
            paths = None
    if paths is None:
        git.ok("add", "--all", "--", ".")


def _changed_paths(git: _PrivateGit, checkout: Path, snapshot: DirSnapshot) -> list[str] | None:
    """Tracked paths whose stat changed (deletions first) and new untracked, unignored files; None: walk instead."""
    fields = git.ok("diff-files", "-z", "--name-status").split("\0")  # measured: overlapping it with the
    candidates = new_name_candidates(checkout, snapshot)  # directory scan only made both slower on 2 cores
    changes = list(zip(fields[0::2], fields[1::2]))
    deleted = [path for status, path in changes if status == "D"]
    if any(os.path.lexists(checkout / path) for path in deleted):
        return None  # beyond a new link, or a file turned directory: `add` knows those cases, update-index not
    if len(candidates) > MAX_CANDIDATES or sum(len(path) + 1 for path in candidates) > MAX_PATHSPEC_BYTES:
        return None
    listed = git.with_paths("ls-files", "--others", "--exclude-standard", "-z", paths=candidates)
    new = [path.rstrip("/") for path in listed.split("\0") if path]
    return deleted + [path for status, path in changes if status != "D" and path] + new


class _PrivateGit:
    """Git on the checkout's files with a git directory, index and object store of the worker's own."""

    def __init__(self, workspace: Workspace) -> None:
        self.git_dir = workspace.publish_dir
        self.cwd = workspace.checkout
        self.env = {"GIT_DIR": str(self.git_dir), "GIT_WORK_TREE": str(workspace.checkout),
                    "GIT_INDEX_FILE": str(self.git_dir / "index"), "GIT_LITERAL_PATHSPECS": "1"}
        if not (self.git_dir / "HEAD").is_file():
            self.git_dir.parent.mkdir(parents=True, exist_ok=True)
            done = run_git(["init", "--quiet", "--bare", str(self.git_dir)])
            if done.returncode != 0:
                raise GitFailed(f"git init of {self.git_dir} failed: {done.stderr.strip()}")
        write_config(self.git_dir, [("core.repositoryformatversion", "0"), ("core.bare", "false"),
                                    ("core.filemode", "true"), ("core.symlinks", "true"),
                                    ("core.autocrlf", "false"), ("gc.auto", "0")])
        info = self.git_dir / "objects" / "info"
        info.mkdir(parents=True, exist_ok=True)
        if workspace.mirror is not None:
            (info / "alternates").write_text(f"{workspace.mirror / 'objects'}\n")

    def ok(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = run_git(list(args), self.cwd, env={**self.env, **(env or {})})
        if result.returncode != 0:
            raise GitFailed(f"git {args[0]} failed while building the change: {result.stderr.strip()[:500]}")
        return result.stdout

    def with_paths(self, *args: str, paths: list[str]) -> str:
        """`git args -- paths`; nothing to do, and no git run, without any paths."""
        return self.ok(*args, "--", *paths) if paths else ""

    def blobs(self, shas: list[str]) -> Iterator[tuple[str, bytes]]:
        """Each blob's content, in order, from one `git cat-file --batch`."""
        process = subprocess.Popen(["git", "cat-file", "--batch"], env={**base_env(), **self.env}, cwd=self.cwd,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write("".join(f"{sha}\n" for sha in shas).encode())
            process.stdin.close()
            for sha in shas:
                header = process.stdout.readline().split()
                size = int(header[2]) if len(header) == 3 else 0
                data = process.stdout.read(size) if size else b""
                process.stdout.read(1)  # the newline after each object
                yield sha, data
        finally:
            process.stdout.close()
            process.wait()


def _entries(raw: str) -> Iterator[Entry]:
    """Parse `diff-tree --raw -z`: ':old_mode new_mode old_sha new_sha status\\0path\\0' per change."""
    fields = raw.split("\0")
    for meta, path in zip(fields[0::2], fields[1::2]):
        if not meta.startswith(":"):
            continue
        _, new_mode, old_sha, new_sha, status = meta[1:].split()
        yield Entry(path, status[0], new_mode, new_sha, old_sha)


def _refused_paths(entries: list[Entry]) -> list[str]:
    problems = []
    for entry in entries:
        if entry.status == "D":
            continue
        name = posixpath.basename(entry.path)
        if any(fnmatch.fnmatch(name, pattern) for pattern in DENIED_PATTERNS) and not name.endswith(TEMPLATE_SUFFIXES):
            problems.append(f"{entry.path} is a file forgecrew never publishes (secrets and keys belong elsewhere)")
        elif entry.mode == GITLINK_MODE:
            problems.append(f"{entry.path} is a nested git repository, not part of this one")
    return problems


def _refused_content(git: _PrivateGit, entries: list[Entry], contains_secret: Callable[[str], bool]) -> list[str]:
    """Links out of the repository, oversized files, and secrets or token shapes in what was added."""
    wanted = [entry for entry in entries if entry.status != "D" and entry.mode != GITLINK_MODE]
    old = {entry.old_blob for entry in wanted if entry.status == "M" and entry.mode != LINK_MODE}
    shas = list(dict.fromkeys([*(entry.blob for entry in wanted), *(sha for sha in old if set(sha) != {"0"})]))
    sizes = dict(_sizes(git, shas))
    big = [entry for entry in wanted if sizes.get(entry.blob, 0) > MAX_FILE_BYTES]
    problems = [f"{entry.path} is {sizes[entry.blob] // (1024 * 1024)} MB, over the "
                f"{MAX_FILE_BYTES // (1024 * 1024)} MB forgecrew publishes" for entry in big]
    readable = [sha for sha in shas if sizes.get(sha, 0) <= MAX_FILE_BYTES]
    contents = dict(git.blobs(readable))
    for entry in wanted:
        if entry in big:
            continue
        data = contents.get(entry.blob, b"")
        if entry.mode == LINK_MODE:
            if _leaves_repository(entry.path, data.decode("utf-8", "replace")):
                problems.append(f"{entry.path} is a symbolic link leading out of the repository")
            continue
        added = _added_text(data, contents.get(entry.old_blob, b"") if entry.status == "M" else b"")
        if contains_secret(added):
            problems.append(f"{entry.path} holds one of forgecrew's own secrets")
        elif TOKEN_PATTERNS.search(added):
            problems.append(f"{entry.path} holds something shaped like an access token or API key")
    return problems


def _sizes(git: _PrivateGit, shas: list[str]) -> Iterator[tuple[str, int]]:
    if not shas:
        return
    listing = subprocess.run(["git", "cat-file", "--batch-check"], input="".join(f"{sha}\n" for sha in shas),
                             env={**base_env(), **git.env}, cwd=git.cwd, capture_output=True, text=True)
    for line in listing.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            yield parts[0], int(parts[2])


def _added_text(new: bytes, old: bytes) -> str:
    """The lines of `new` that `old` does not have: what this change adds (base content is not ours to judge)."""
    if not old:
        return new.decode("utf-8", "replace")
    before = set(old.splitlines())
    return b"\n".join(line for line in new.splitlines() if line not in before).decode("utf-8", "replace")


def _leaves_repository(path: str, target: str) -> bool:
    if target.startswith("/"):
        return True
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return resolved == ".." or resolved.startswith("../")
