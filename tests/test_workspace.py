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
from common.forge.local import LocalForge
from common.gitsafe import GitCredential
from common.settings import Settings
from tests.git_source import FAKE_TOKEN, git
from workers.change import build_change
from workers.workspace import CloneFailed, Workspace, WorkspaceManager, branch_name

CREDENTIAL = GitCredential("https://github.com", "x-access-token", FAKE_TOKEN)
BOT = ("forgecrew[bot]", "bot@example.com")


@pytest.fixture(params=[0, 1], ids=["written", "pooled"])
def manager(request: pytest.FixtureRequest, tmp_path: Path) -> WorkspaceManager:
    """Every test here runs with checkouts written per task and taken from the pool."""
    return WorkspaceManager(tmp_path / "workspaces", pool_size=request.param)


def publish(workspace: Workspace, tmp_path: Path) -> str:
    """Build the worker's commit and push it to the source (the local forge's acme/app) as publishing does."""
    change = build_change(workspace, "change", author=BOT, contains_secret=lambda text: False)
    assert change is not None
    forge = LocalForge(Settings(database_url="sqlite://", local_forge_root=tmp_path / "forge"))
    forge.push_branch("acme/app", source=change.git_dir, commit=change.commit, branch=workspace.branch,
                      expected=workspace.remote_branch_sha)
    workspace.record_push(change.commit)
    return change.commit


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
    git("add", "only-in-one.txt", cwd=one.checkout)
    sha = subprocess.run(["git", "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "one"],
                         cwd=one.checkout, check=True) and git("rev-parse", "HEAD", cwd=one.checkout)

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
        manager.prepare(1, "acme/missing", url, "forgecrew/run-1", credential=CREDENTIAL)
    assert url in str(caught.value)
    assert "does not appear to be a git repository" in str(caught.value)
    assert FAKE_TOKEN not in str(caught.value)


def test_clone_url_with_credential_is_refused(manager):
    with pytest.raises(CloneFailed) as caught:
        manager.prepare(1, "acme/app", f"https://x-access-token:{FAKE_TOKEN}@github.com/acme/app.git",
                        "forgecrew/run-1")
    assert FAKE_TOKEN not in str(caught.value)
    assert "passes credentials to git itself" in str(caught.value)


def test_credentials_never_reach_the_disk(manager, source, prepare, tmp_path):
    workspace = prepare(3, credential=CREDENTIAL)
    (workspace.checkout / "change.txt").write_text("change\n")
    publish(workspace, tmp_path)
    prepare(3, credential=CREDENTIAL, start_from_branch=True)
    manager.pool.wait()  # a refill or trash deletion still running would change the tree under rglob

    leaks = [path for path in manager.root.rglob("*")
             if path.is_file() and FAKE_TOKEN.encode() in path.read_bytes()]
    assert leaks == []
    for config in manager.root.rglob("config"):
        assert "extraheader" not in config.read_text().lower() and "[credential" not in config.read_text()


def test_publishing_builds_one_commit_of_the_checkouts_files(source, prepare, tmp_path):
    workspace = prepare(4, "forgecrew/issue-4-add-feature")
    assert build_change(workspace, "nothing", author=BOT, contains_secret=lambda text: False) is None
    (workspace.checkout / "feature.py").write_text("print('hi')\n")

    sha = publish(workspace, tmp_path)

    assert source.rev("refs/heads/forgecrew/issue-4-add-feature") == sha
    committed = git("show", "--name-only", "--format=", sha, cwd=source.bare).split()
    assert committed == ["feature.py"]
    assert git("log", "-1", "--format=%an <%ae>", sha, cwd=source.bare) == "forgecrew[bot] <bot@example.com>"
    assert workspace.read_metadata()["remote_branch_sha"] == sha


def test_push_after_retry_replaces_branch_and_lease_protects_others(source, prepare, tmp_path):
    first = prepare(6)
    (first.checkout / "a.txt").write_text("a")
    publish(first, tmp_path)

    retry = prepare(6)  # a retried task starts again from the base and replaces the branch
    (retry.checkout / "b.txt").write_text("b")
    sha = publish(retry, tmp_path)
    assert source.rev("refs/heads/forgecrew/run-6") == sha

    source.commit("human.txt", "a person pushed meanwhile", branch="forgecrew/run-6")
    (retry.checkout / "c.txt").write_text("c")
    with pytest.raises(PushRejected, match="forgecrew/run-6"):
        publish(retry, tmp_path)


def test_follow_up_starts_from_existing_branch(source, prepare, tmp_path):
    pushed = source.commit("earlier.txt", "earlier work", branch="forgecrew/issue-9-x")
    workspace = prepare(9, "forgecrew/issue-9-x", start_from_branch=True)
    assert workspace.head_sha == pushed
    (workspace.checkout / "later.txt").write_text("later\n")
    change = build_change(workspace, "more", author=BOT, contains_secret=lambda text: False)
    assert change is not None and change.parent == pushed
    assert change.files == ["earlier.txt", "later.txt"]  # what the PR changes against its base


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
        return manager.prepare(task_id, "acme/app", source.url, f"forgecrew/run-{task_id}").head_sha

    with ThreadPoolExecutor(max_workers=4) as pool:
        heads = list(pool.map(prepare_one, range(1, 9)))
    assert set(heads) == {source.rev("refs/heads/main")}
    assert [path.name for path in manager.mirrors.joinpath("acme").iterdir() if path.is_dir()] == ["app.git"]


def test_hold_waits_for_an_earlier_run_then_gives_up_with_a_reason(manager):
    """A run taken over on the same host must not stall the new one for ever behind its lock."""
    import threading

    from workers.workspace import WorkspaceBusy

    entered, release = threading.Event(), threading.Event()

    def earlier_run() -> None:
        with manager.hold(7):
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=earlier_run)
    thread.start()
    assert entered.wait(5)
    with pytest.raises(WorkspaceBusy, match=r"task 7: its workspace .* is still held by another run on this host"):
        with manager.hold(7, wait=0.3):
            pass
    release.set()
    thread.join(5)
    with manager.hold(7, wait=0.3):  # free again: the next run gets it
        pass
