"""LocalForge: real bare repositories and git, issue and PR state in files beside them."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from common.forge.base import ForgeError, IssueComment
from common.forge.local import LocalForge
from common.settings import Settings
from common.specialties import StatusLabel

REPO = "acme/widgets"
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.com",
                "GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "dev@example.com"}


def git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    merged = {**os.environ, **GIT_IDENTITY, **(env or {})}
    return subprocess.run(["git", *args], cwd=cwd, env=merged, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def forge(tmp_path: Path) -> LocalForge:
    return LocalForge(Settings(forge="local", local_forge_root=tmp_path / "forge"))


@pytest.fixture
def seeded(forge: LocalForge, tmp_path: Path) -> LocalForge:
    source = tmp_path / "source"
    (source / "pkg").mkdir(parents=True)
    (source / "README.md").write_text("# widgets\n")
    (source / "pkg" / "core.py").write_text("def answer():\n    return 42\n")
    forge.create_repo(REPO, source)
    forge.create_issue(REPO, 1, "Answer is wrong", "It should be 43", author="alice", labels=("forgecrew",))
    return forge


def push_branch(forge: LocalForge, tmp_path: Path, branch: str) -> Path:
    work = tmp_path / "work"
    git("clone", "-q", forge.clone_url(REPO), str(work))
    git("checkout", "-q", "-b", branch, cwd=work)
    (work / "pkg" / "core.py").write_text("def answer():\n    return 43\n")
    git("commit", "-q", "-am", "Fix the answer", cwd=work)
    commit = git("rev-parse", "HEAD", cwd=work)
    forge.push_branch(REPO, source=work / ".git", commit=commit, branch=branch, expected=None)
    return work


def test_create_repo_seeds_files_and_clones(seeded: LocalForge, tmp_path: Path) -> None:
    assert seeded.default_branch(REPO) == "main"
    assert seeded.git_credential(REPO) is None
    work = push_branch(seeded, tmp_path, "forgecrew/1-answer")
    assert (work / "README.md").read_text() == "# widgets\n"
    assert git("log", "--format=%an %s", "main", cwd=work) == "forgecrew[bot] Initial commit"
    remote = git("--git-dir", seeded.clone_url(REPO), "branch", "--list", "forgecrew/*")
    assert remote.strip() == "forgecrew/1-answer"


def test_open_or_update_pr_twice_returns_the_same_number(seeded: LocalForge, tmp_path: Path) -> None:
    push_branch(seeded, tmp_path, "forgecrew/1-answer")
    first = seeded.open_or_update_pr(REPO, branch="forgecrew/1-answer", base="main", title="Fix answer",
                                     body="Closes #1", draft=True)
    second = seeded.open_or_update_pr(REPO, branch="forgecrew/1-answer", base="main", title="Fix the answer",
                                      body="Closes #1 with a test", draft=False)
    assert (first.created, second.created) == (True, False)
    assert first.number == second.number == 2  # issues and PRs share one sequence
    assert first.url == "local://acme/widgets/pull/2" and second.draft is True
    [pull] = seeded.pull_requests(REPO)
    assert {k: pull[k] for k in ("number", "branch", "base", "title", "body", "draft", "url")} == {
        "number": 2, "branch": "forgecrew/1-answer", "base": "main", "title": "Fix the answer",
        "body": "Closes #1 with a test", "draft": True, "url": "local://acme/widgets/pull/2"}


def test_pr_needs_a_pushed_branch(seeded: LocalForge) -> None:
    with pytest.raises(ForgeError, match="push it before"):
        seeded.open_or_update_pr(REPO, branch="never-pushed", base="main", title="t", body="b", draft=False)


def test_labels_and_comments_are_recorded(seeded: LocalForge) -> None:
    seeded.add_comment(REPO, 1, "/forgecrew retry", author="bob")
    seeded.comment(REPO, 1, "Working on it")
    seeded.set_status_label(REPO, 1, StatusLabel.QUEUED)
    seeded.set_status_label(REPO, 1, StatusLabel.WORKING)
    seeded.set_status_label(REPO, 1, StatusLabel.WORKING)
    record = seeded.issue_record(REPO, 1)
    assert record["labels"] == ["forgecrew", "forgecrew:working"]
    assert [(c["author"], c["body"]) for c in record["comments"]] == [
        ("bob", "/forgecrew retry"), ("forgecrew[bot]", "Working on it")]
    issue = seeded.get_issue(REPO, 1)
    assert (issue.title, issue.body, issue.author) == ("Answer is wrong", "It should be 43", "alice")
    assert issue.comments == (IssueComment("bob", "/forgecrew retry"),) and issue.labels == ("forgecrew", "forgecrew:working")
    assert seeded.has_write_access(REPO, "anyone")


def test_concurrent_comments_are_all_kept(seeded: LocalForge) -> None:
    def write(worker: int) -> None:
        for n in range(10):
            seeded.comment(REPO, 1, f"worker {worker} note {n}")

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    bodies = {c["body"] for c in seeded.issue_record(REPO, 1)["comments"]}
    assert bodies == {f"worker {w} note {n}" for w in range(8) for n in range(10)}


def test_missing_things_are_forge_errors(forge: LocalForge, seeded: LocalForge) -> None:
    with pytest.raises(ForgeError, match="issue #9 not found"):
        seeded.get_issue(REPO, 9)
    with pytest.raises(ForgeError, match="acme/nothing not found"):
        forge.get_issue("acme/nothing", 1)
    with pytest.raises(ForgeError, match="owner/name"):
        forge.clone_url("../escape")
    with pytest.raises(ForgeError, match="already exists"):
        seeded.create_repo(REPO)


def test_empty_repo_and_other_default_branch(forge: LocalForge) -> None:
    path = forge.create_repo("acme/empty", default_branch="trunk")
    assert path.is_dir() and forge.default_branch("acme/empty") == "trunk"
    assert forge.clone_url("acme/empty") == str(path.resolve())


def test_draft_is_marked_ready_for_review(seeded: LocalForge, tmp_path: Path) -> None:
    push_branch(seeded, tmp_path, "forgecrew/1-answer")
    info = seeded.open_or_update_pr(REPO, branch="forgecrew/1-answer", base="main", title="t", body="b", draft=True)
    seeded.mark_ready_for_review(REPO, info.number)
    assert seeded.pull_requests(REPO)[0]["draft"] is False
    with pytest.raises(ForgeError, match="#99 not found"):
        seeded.mark_ready_for_review(REPO, 99)
