"""WorkspaceManager against real git repositories on disk (file:// remotes stand in for the forge)."""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from common.forge.base import PushRejected
from tests.git_source import CREDENTIAL_ENV, FAKE_TOKEN, git
from workers.workspace import (
    CloneFailed,
    WorkspaceManager,
    branch_name,
    changed_files,
    commit_all,
    push,
)


def test_mirror_is_created_once_then_fetched(manager, source, prepare):
    first = prepare(1)
    mirror = manager.mirror_path("acme/app")
    marker = mirror / "forgecrew-test-marker"
    marker.write_text("still the same mirror")
    new_sha = source.commit("NEW.md", "new\n")

    second = prepare(2)

    assert marker.exists(), "second prepare must fetch the mirror, not clone it again"
    assert (second.checkout / "NEW.md").exists()
    assert second.head_sha == second.base_sha == new_sha
    assert not (first.checkout / "NEW.md").exists()
    assert git("config", "gc.auto", cwd=mirror) == "0"


def test_checkouts_are_independent(manager, prepare):
    one, two = prepare(1), prepare(2)
    (one.checkout / "only-in-one.txt").write_text("1")
    sha = commit_all(one, "one", "bot", "bot@example.com")

    assert not (two.checkout / "only-in-one.txt").exists()
    assert sha not in git("log", "--all", "--format=%H", cwd=two.checkout)
    assert "forgecrew/run-1" not in git("branch", "--list", cwd=manager.mirror_path("acme/app"))

    subprocess.run(["rm", "-rf", str(one.path)], check=True)
    git("fsck", "--no-progress", cwd=two.checkout)
    git("fsck", "--no-progress", cwd=manager.mirror_path("acme/app"))
    assert prepare(3).checkout.joinpath("README.md").read_text() == "hello\n"


def test_checkout_is_on_new_branch_with_credential_free_origin(source, prepare):
    workspace = prepare(7, "forgecrew/issue-7-fix")
    assert git("branch", "--show-current", cwd=workspace.checkout) == "forgecrew/issue-7-fix"
    assert git("remote", "get-url", "origin", cwd=workspace.checkout) == source.url
    meta = json.loads(workspace.metadata_path.read_text())
    assert meta["state"] == "running" and meta["base_branch"] == "main" and meta["task_id"] == 7
    assert workspace.transcript_path == workspace.path / "transcript.jsonl"


def test_retried_task_is_prepared_from_scratch(prepare):
    first = prepare(5)
    (first.checkout / "leftover.txt").write_text("from attempt 1")
    first.mark_finished("failed")

    again = prepare(5)

    assert again.path == first.path
    assert not (again.checkout / "leftover.txt").exists()
    assert again.read_metadata()["state"] == "running"
    assert again.read_metadata()["finished_at"] is None


def test_missing_repository_raises_clone_failed_naming_url(manager, tmp_path):
    url = (tmp_path / "nowhere" / "missing.git").as_uri()
    with pytest.raises(CloneFailed) as caught:
        manager.prepare(1, "acme/missing", url, "forgecrew/run-1", git_env=CREDENTIAL_ENV)
    assert url in str(caught.value)
    assert "does not appear to be a git repository" in str(caught.value)
    assert FAKE_TOKEN not in str(caught.value)


def test_clone_url_with_credential_is_refused(manager):
    with pytest.raises(CloneFailed) as caught:
        manager.prepare(1, "acme/app", f"https://x-access-token:{FAKE_TOKEN}@github.com/acme/app.git",
                        "forgecrew/run-1", git_env={})
    assert FAKE_TOKEN not in str(caught.value)
    assert "git_env" in str(caught.value)


def test_credentials_from_git_env_never_reach_the_disk(manager, source, prepare):
    workspace = prepare(3, git_env=CREDENTIAL_ENV)
    (workspace.checkout / "change.txt").write_text("change\n")
    commit_all(workspace, "change", "bot", "bot@example.com")
    push(workspace, CREDENTIAL_ENV)
    prepare(3, git_env=CREDENTIAL_ENV, start_from_branch=True)

    leaks = [path for path in manager.root.rglob("*")
             if path.is_file() and FAKE_TOKEN.encode() in path.read_bytes()]
    assert leaks == []
    for config in manager.root.rglob("config"):
        assert "extraheader" not in config.read_text().lower()


def test_commit_all_and_push_publish_the_branch(source, prepare):
    workspace = prepare(4, "forgecrew/issue-4-add-feature")
    assert commit_all(workspace, "nothing", "bot", "bot@example.com") is None
    (workspace.checkout / "feature.py").write_text("print('hi')\n")
    (workspace.checkout / ".env").write_text("SECRET=1\n")
    (workspace.checkout / "outside").symlink_to("/etc/hostname")

    sha = commit_all(workspace, "Add feature", "forgecrew[bot]", "bot@example.com")
    push(workspace, {})

    assert sha and source.rev("refs/heads/forgecrew/issue-4-add-feature") == sha
    committed = git("show", "--name-only", "--format=", sha, cwd=workspace.checkout).split()
    assert committed == ["feature.py"]
    assert git("log", "-1", "--format=%an <%ae>", cwd=workspace.checkout) == "forgecrew[bot] <bot@example.com>"
    assert changed_files(workspace) == ["feature.py"]


def test_push_after_retry_replaces_branch_and_lease_protects_others(source, prepare):
    first = prepare(6)
    (first.checkout / "a.txt").write_text("a")
    commit_all(first, "a", "bot", "bot@example.com")
    push(first, {})

    retry = prepare(6)  # a retried task starts again from the base and force-pushes
    (retry.checkout / "b.txt").write_text("b")
    sha = commit_all(retry, "b", "bot", "bot@example.com")
    push(retry, {})
    assert source.rev("refs/heads/forgecrew/run-6") == sha

    source.commit("human.txt", "a person pushed meanwhile", branch="forgecrew/run-6")
    (retry.checkout / "c.txt").write_text("c")
    commit_all(retry, "c", "bot", "bot@example.com")
    with pytest.raises(PushRejected, match="forgecrew/run-6"):
        push(retry, {})


def test_follow_up_starts_from_existing_branch(source, prepare):
    pushed = source.commit("earlier.txt", "earlier work", branch="forgecrew/issue-9-x")
    workspace = prepare(9, "forgecrew/issue-9-x", start_from_branch=True)
    assert workspace.head_sha == pushed
    assert changed_files(workspace) == ["earlier.txt"]


def _task_dir(manager: WorkspaceManager, task_id: int, *, state: str | None, finished: datetime | None,
              mtime: datetime | None = None) -> Path:
    path = manager.task_dir(task_id)
    path.mkdir(parents=True)
    if state is not None:
        meta = {"task_id": task_id, "state": state, "finished_at": finished.isoformat() if finished else None}
        (path / "metadata.json").write_text(json.dumps(meta))
    if mtime is not None:
        for entry in [*path.iterdir(), path]:
            os.utime(entry, (mtime.timestamp(), mtime.timestamp()))
    return path


def test_gc_removes_idle_task_dirs_but_never_active_or_held_ones(manager):
    now = datetime(2030, 1, 10, tzinfo=timezone.utc)
    old, new = now - timedelta(days=8), now - timedelta(days=1)
    old_done = _task_dir(manager, 1, state="done", finished=old)
    old_active = _task_dir(manager, 2, state="failed", finished=old)
    crashed = _task_dir(manager, 3, state="running", finished=None, mtime=old)  # worker died mid-run
    new_done = _task_dir(manager, 4, state="done", finished=new)
    old_no_metadata = _task_dir(manager, 5, state=None, finished=None, mtime=old)
    held = _task_dir(manager, 6, state="running", finished=None, mtime=old)
    recent_running = _task_dir(manager, 7, state="running", finished=None, mtime=new)
    (old_done / "repo").mkdir()
    (old_done / "repo" / "readonly").write_text("x")
    os.chmod(old_done / "repo", 0o500)

    with manager.hold(6):  # a run in progress on this host, whatever the database says
        removed = manager.gc(timedelta(days=7), {2}, now=now)

    assert sorted(removed) == [old_done, crashed, old_no_metadata]
    assert not old_done.exists() and not crashed.exists() and not old_no_metadata.exists()
    assert old_active.exists() and new_done.exists() and held.exists() and recent_running.exists()
    assert manager.gc(timedelta(days=7), {2}, now=now) == [held]  # once released, it is just old


def test_gc_without_tasks_dir_is_a_no_op(manager):
    assert manager.gc(timedelta(days=7), set()) == []


def test_branch_names_are_short_and_safe():
    assert branch_name(42, "Fix: crash on ÜNICODE input!!") == "forgecrew/issue-42-fix-crash-on-unicode-input"
    assert branch_name(None, "Bump deps", task_id=17) == "forgecrew/run-17-bump-deps"
    assert branch_name(3, "???") == "forgecrew/issue-3"
    long = branch_name(1, "word " * 40)
    assert len(long) <= len("forgecrew/issue-1-") + 40 and not long.endswith("-")
    subprocess.run(["git", "check-ref-format", "--branch", long], check=True, capture_output=True)


def test_concurrent_tasks_share_one_mirror_safely(manager, source):
    def prepare_one(task_id: int) -> str:
        return manager.prepare(task_id, "acme/app", source.url, f"forgecrew/run-{task_id}", git_env={}).head_sha

    with ThreadPoolExecutor(max_workers=4) as pool:
        heads = list(pool.map(prepare_one, range(1, 9)))
    assert set(heads) == {source.rev("refs/heads/main")}
    assert [path.name for path in manager.mirrors.joinpath("acme").iterdir() if path.is_dir()] == ["app.git"]
