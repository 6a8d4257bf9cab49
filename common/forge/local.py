"""Local forge: bare repositories on disk, with issues and pull requests kept as JSON beside them.

Layout under settings.local_forge_root:
    <owner>/<repo>.git                      the bare repository (clone and push here)
    <owner>/<repo>.forgecrew/issues/<n>.json  {number, title, body, author, labels, comments, url}
    <owner>/<repo>.forgecrew/pulls.json       [{number, branch, base, title, body, draft, state, url}]
Writes take an fcntl lock on <repo>.forgecrew/.lock and replace files atomically.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.forge.base import (CommentGone, FailingCheck, ForgeError, IssueComment, IssueInfo, PullFeedback,
                               PullRequestInfo, PushRejected, ReviewNote)
from common.gitsafe import GitCredential, run_git
from common.settings import Settings
from common.specialties import StatusLabel

REPO_NAME = re.compile(r"^(?!\.)[A-Za-z0-9_.-]+/(?!\.)[A-Za-z0-9_.-]+$")
ISSUE_FILE = re.compile(r"^(\d+)\.json$")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: Any) -> None:
    """Write through a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as out:
        json.dump(data, out, indent=2)
    os.replace(tmp, path)


def _git(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run git hardened (no hooks, no secrets), turning a failure into a ForgeError with git's words."""
    result = run_git(args, env=env)
    if result.returncode != 0:
        raise ForgeError(f"git {args[0]} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


class LocalForge:
    """The forge port without a network: bare repos, issue and PR state as files."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.root = Path(settings.local_forge_root)
        self.bot_name = settings.bot_name
        self.bot_email = settings.bot_email

    # -- where things live ------------------------------------------------------------------
    def bare_path(self, repo: str) -> Path:
        if not REPO_NAME.match(repo):
            raise ForgeError(f"repository must be written owner/name (letters, digits, . _ -), got {repo!r}")
        return self.root / f"{repo}.git"

    def state_dir(self, repo: str) -> Path:
        return self.root / f"{repo}.forgecrew"

    def _existing(self, repo: str) -> Path:
        path = self.bare_path(repo)
        if not (path / "HEAD").is_file():
            raise ForgeError(f"repository {repo} not found at {path}: create it with LocalForge.create_repo "
                             f"or `git init --bare {path}`")
        return path

    @contextmanager
    def _locked(self, repo: str) -> Iterator[Path]:
        """Hold the repo's state lock, so concurrent workers never lose each other's writes."""
        self._existing(repo)
        state = self.state_dir(repo)
        state.mkdir(parents=True, exist_ok=True)
        with open(state / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield state
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- the Forge protocol -------------------------------------------------------------------
    def clone_url(self, repo: str) -> str:
        return str(self.bare_path(repo).resolve())

    def git_credential(self, repo: str) -> GitCredential | None:
        return None

    def push_branch(self, repo: str, *, source: Path, commit: str, branch: str, expected: str | None) -> None:
        """The forge side fetches the commit from the worker's git directory, then moves the branch if unmoved.

        Nothing runs inside the bare repository: no receive-pack, so no hook of its own or of
        anyone else; the ref moves only with compare-and-swap, like --force-with-lease.
        """
        bare = self._existing(repo)
        incoming = f"refs/forgecrew-incoming/{os.getpid()}-{commit[:12]}"
        try:
            _git("--git-dir", str(bare), "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", str(source),
                 f"+{commit}:{incoming}")
            old = expected or "0" * 40
            moved = run_git(["--git-dir", str(bare), "update-ref", "-m", "forgecrew push", f"refs/heads/{branch}",
                             commit, old])
            if moved.returncode != 0:
                raise PushRejected(f"push of {branch} to {repo} was rejected: the branch is no longer at "
                                   f"{expected or 'nothing'} (someone else pushed to it)")
        finally:
            run_git(["--git-dir", str(bare), "update-ref", "-d", incoming])

    def default_branch(self, repo: str) -> str:
        path = self._existing(repo)
        return _git("--git-dir", str(path), "symbolic-ref", "--short", "HEAD").stdout.strip()

    def get_issue(self, repo: str, number: int) -> IssueInfo:
        record = self.issue_record(repo, number)
        comments = tuple(IssueComment(c["author"], c["body"]) for c in record["comments"]
                         if c["author"] != self.bot_name and not c["author"].endswith("[bot]"))
        return IssueInfo(repo=repo, number=number, title=record["title"], body=record["body"],
                         author=record["author"], labels=tuple(record["labels"]), comments=comments,
                         url=record["url"], state=record.get("state", "open"))

    def has_write_access(self, repo: str, username: str) -> bool:
        """Whoever can write to the directory is trusted; there are no accounts."""
        return True

    def comment(self, repo: str, number: int, body: str) -> int:
        """On an issue's record, or on a pull request's when `number` is a PR (its conversation)."""
        if any(pull["number"] == number for pull in self.pull_requests(repo)):
            return self._add_to_pull(repo, number, "comments", {"author": self.bot_name, "body": body})
        return self.add_comment(repo, number, body, author=self.bot_name)

    def pull_feedback(self, repo: str, number: int) -> PullFeedback:
        pull = self._pull(repo, number)
        people = lambda items: [i for i in items if i["author"] != self.bot_name]
        reviews = tuple(ReviewNote(id=r["id"], author=r["author"], body=r["body"], state=r["state"])
                        for r in people(pull.get("reviews", [])))
        comments = tuple(ReviewNote(id=c["id"], author=c["author"], body=c["body"], path=c.get("path", ""),
                                    line=c.get("line"), review_id=c.get("review_id"), in_reply_to=c.get("in_reply_to"))
                         for c in people(pull.get("review_comments", [])))
        return PullFeedback(reviews, comments)

    def reply_to_review_comment(self, repo: str, number: int, comment_id: int, body: str) -> None:
        thread = next((c for c in self._pull(repo, number).get("review_comments", []) if c["id"] == comment_id), None)
        if thread is None:
            raise ForgeError(f"review comment {comment_id} on {repo}#{number} not found")
        self._add_to_pull(repo, number, "review_comments", {"author": self.bot_name, "body": body,
                                                            "path": thread.get("path", ""), "line": thread.get("line"),
                                                            "in_reply_to": comment_id})

    def pull_head_sha(self, repo: str, number: int) -> str:
        """Where the PR's branch is in the bare repository now."""
        branch = self._pull(repo, number)["branch"]
        found = run_git(["--git-dir", str(self._existing(repo)), "rev-parse", "--verify", "--quiet",
                         f"refs/heads/{branch}^{{commit}}"])
        if found.returncode != 0:
            raise ForgeError(f"branch {branch} of pull request #{number} is not in {repo}")
        return found.stdout.strip()

    def pull_state(self, repo: str, number: int) -> str:
        """The recorded state; an open PR whose branch the base branch now contains was merged (by git, by hand)."""
        pull = self._pull(repo, number)
        if pull["state"] != "open":
            return str(pull["state"])
        bare = str(self._existing(repo))
        head = run_git(["--git-dir", bare, "rev-parse", "--verify", "--quiet", f"refs/heads/{pull['branch']}^{{commit}}"])
        if head.returncode != 0:
            return "open"
        contained = run_git(["--git-dir", bare, "merge-base", "--is-ancestor", head.stdout.strip(),
                             f"refs/heads/{pull['base']}"])
        return "merged" if contained.returncode == 0 else "open"

    def failing_checks(self, repo: str, sha: str) -> tuple[FailingCheck, ...]:
        """Bare repositories run no CI."""
        return ()

    def edit_comment(self, repo: str, number: int, comment_id: int, body: str) -> None:
        with self._locked(repo):
            record = self.issue_record(repo, number)
            found = [c for c in record["comments"] if c.get("id") == comment_id]
            if not found:
                raise CommentGone(f"comment {comment_id} on {repo}#{number} was deleted")
            found[0].update(body=body, edited_at=_now())
            self._save_issue(repo, record)

    def react(self, repo: str, number: int, comment_id: int, content: str, *, review_comment: bool = False) -> None:
        """Kept on the issue's record, as {comment id: [contents]} (comment ids are unique in a repository)."""
        with self._locked(repo):
            record = self.issue_record(repo, number)
            record.setdefault("reactions", {}).setdefault(str(comment_id), []).append(content)
            self._save_issue(repo, record)

    def set_status_label(self, repo: str, number: int, label: StatusLabel) -> None:
        with self._locked(repo):
            record = self.issue_record(repo, number)
            others = {status.value for status in StatusLabel} - {label.value}
            labels = [name for name in record["labels"] if name not in others]
            record["labels"] = labels if label.value in labels else [*labels, label.value]
            self._save_issue(repo, record)

    def open_or_update_pr(self, repo: str, *, branch: str, base: str, title: str, body: str,
                          draft: bool) -> PullRequestInfo:
        """Record a PR for `branch`; a second call updates it (draft state stays, as on GitHub)."""
        for ref in (branch, base):
            if not self._has_branch(repo, ref):
                raise ForgeError(f"branch {ref} is not in {repo}: push it before opening a pull request")
        with self._locked(repo) as state:
            pulls = self.pull_requests(repo)
            existing = next((p for p in pulls if p["branch"] == branch and p["state"] == "open"), None)
            if existing is not None:
                existing.update(title=title, body=body, base=base, updated_at=_now())
                pull, created = existing, False
            else:
                number = self._next_number(repo, pulls)
                pull = {"number": number, "branch": branch, "base": base, "title": title, "body": body,
                        "draft": draft, "state": "open", "url": f"local://{repo}/pull/{number}",
                        "created_at": _now(), "updated_at": _now()}
                pulls.append(pull)
                created = True
            _write_json(state / "pulls.json", pulls)
        return PullRequestInfo(number=pull["number"], url=pull["url"], branch=branch, draft=pull["draft"],
                               created=created)

    def label_pull_request(self, repo: str, number: int, label: str, present: bool) -> None:
        def change(pull: dict[str, Any]) -> None:
            labels = [name for name in pull.get("labels", []) if name != label]
            pull["labels"] = [*labels, label] if present else labels

        self._edit_pull(repo, number, change)

    def mark_ready_for_review(self, repo: str, number: int) -> None:
        self._edit_pull(repo, number, lambda pull: pull.update(draft=False, updated_at=_now()))

    def _edit_pull(self, repo: str, number: int, change: Callable[[dict[str, Any]], None]) -> None:
        """Apply `change` to one recorded pull request under the repo's lock."""
        with self._locked(repo) as state:
            pulls = self.pull_requests(repo)
            pull = next((p for p in pulls if p["number"] == number), None)
            if pull is None:
                raise ForgeError(f"pull request #{number} not found in {repo}")
            change(pull)
            _write_json(state / "pulls.json", pulls)

    def _pull(self, repo: str, number: int) -> dict[str, Any]:
        pull = next((p for p in self.pull_requests(repo) if p["number"] == number), None)
        if pull is None:
            raise ForgeError(f"pull request #{number} not found in {repo}")
        return pull

    def _add_to_pull(self, repo: str, number: int, key: str, item: dict[str, Any]) -> int:
        """Append `item` to one list of a pull request's record, with an id unique in the repository; the id."""
        added: list[int] = []

        def change(pull: dict[str, Any]) -> None:
            state = self.state_dir(repo)
            counter = state / "review-ids"
            next_id = int(counter.read_text()) + 1 if counter.is_file() else 1
            counter.write_text(str(next_id))
            pull.setdefault(key, []).append({"id": next_id, "at": _now(), **item})
            added.append(next_id)

        self._edit_pull(repo, number, change)
        return added[0]

    # -- helpers for tests, `forgecrew run` and docs -----------------------------------------
    def add_review(self, repo: str, number: int, *, author: str, state: str, body: str = "",
                   comments: tuple[dict[str, Any], ...] = ()) -> int:
        """A person's review of pull request `number` (state CHANGES_REQUESTED, COMMENTED, APPROVED) with
        line comments ({path, line, body}); the review's id."""
        review_id = self._add_to_pull(repo, number, "reviews", {"author": author, "state": state, "body": body})
        for comment in comments:
            self._add_to_pull(repo, number, "review_comments", {"author": author, "review_id": review_id, **comment})
        return review_id

    def create_repo(self, repo: str, source_dir: str | Path | None = None, *,
                    default_branch: str = "main") -> Path:
        """Make the bare repo, optionally with one commit holding `source_dir`'s files."""
        path = self.bare_path(repo)
        if path.exists():
            raise ForgeError(f"repository {repo} already exists at {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        _git("init", "--quiet", "--bare", f"--initial-branch={default_branch}", str(path))
        if source_dir is not None:
            self._seed(path, Path(source_dir))
        return path

    def _seed(self, path: Path, source: Path) -> None:
        if not source.is_dir():
            raise ForgeError(f"cannot seed a repository from {source}: not a directory")
        with tempfile.TemporaryDirectory() as tmp:
            env = {"GIT_DIR": str(path), "GIT_WORK_TREE": str(source),
                   "GIT_INDEX_FILE": str(Path(tmp) / "index"),
                   "GIT_AUTHOR_NAME": self.bot_name, "GIT_AUTHOR_EMAIL": self.bot_email,
                   "GIT_COMMITTER_NAME": self.bot_name, "GIT_COMMITTER_EMAIL": self.bot_email}
            _git("add", "--all", ".", env=env)
            _git("commit", "--quiet", "--allow-empty", "--no-verify",
                 "-m", "Initial commit", env=env)

    def create_issue(self, repo: str, number: int, title: str, body: str = "", *,
                     author: str = "local", labels: tuple[str, ...] = ()) -> IssueInfo:
        """Seed an issue (there is no tracker); an existing one keeps its comments."""
        with self._locked(repo):
            try:
                record = self.issue_record(repo, number)
            except ForgeError:
                record = {"number": number, "comments": [], "created_at": _now()}
            record.update(title=title, body=body, author=author, labels=list(labels),
                          url=f"local://{repo}/issues/{number}")
            self._save_issue(repo, record)
        return self.get_issue(repo, number)

    def close_issue(self, repo: str, number: int) -> None:
        """Close an issue, as a person on a tracker would (get_issue then reports it closed)."""
        with self._locked(repo):
            record = self.issue_record(repo, number)
            record["state"] = "closed"
            self._save_issue(repo, record)

    def add_comment(self, repo: str, number: int, body: str, *, author: str) -> int:
        """Append a comment by `author` (people's commands in tests; forgecrew's own via comment()); its id."""
        with self._locked(repo):
            record = self.issue_record(repo, number)
            comment_id = max([0, *(c.get("id", 0) for c in record["comments"])]) + 1
            record["comments"].append({"id": comment_id, "author": author, "body": body, "at": _now()})
            self._save_issue(repo, record)
            return comment_id

    def issue_record(self, repo: str, number: int) -> dict[str, Any]:
        """The stored issue as a dict: title, body, author, labels, comments, url."""
        path = self.state_dir(repo) / "issues" / f"{number}.json"
        if not path.is_file():
            self._existing(repo)
            raise ForgeError(f"issue #{number} not found in {repo}: create it with LocalForge.create_issue "
                             f"(it would live at {path})")
        return json.loads(path.read_text())

    def pull_requests(self, repo: str) -> list[dict[str, Any]]:
        """Every recorded pull request of `repo`, oldest first."""
        path = self.state_dir(repo) / "pulls.json"
        return json.loads(path.read_text()) if path.is_file() else []

    def _save_issue(self, repo: str, record: dict[str, Any]) -> None:
        record["updated_at"] = _now()
        _write_json(self.state_dir(repo) / "issues" / f"{record['number']}.json", record)

    def _next_number(self, repo: str, pulls: list[dict[str, Any]]) -> int:
        """Issues and PRs share one sequence, as on GitHub."""
        issues_dir = self.state_dir(repo) / "issues"
        issue_numbers = [int(m.group(1)) for p in issues_dir.glob("*.json") if (m := ISSUE_FILE.match(p.name))]
        return max([0, *issue_numbers, *(p["number"] for p in pulls)]) + 1

    def _has_branch(self, repo: str, branch: str) -> bool:
        path = self._existing(repo)
        found = run_git(["--git-dir", str(path), "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"])
        return found.returncode == 0
