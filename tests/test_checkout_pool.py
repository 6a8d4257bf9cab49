"""The checkout pool against real git: take is a rename, moves write only changed files, publishing reads only them."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pytest

from tests.git_source import FAKE_TOKEN, Source, git
from tests.unprivileged import UID, give, owned_dir, prefix
from workers.change import ChangeRefused, build_change
from workers.checkout_pool import CheckoutPool
from workers.workspace import WorkspaceManager

BOT = ("forgecrew[bot]", "bot@example.com")
SANDBOX_USER = (65534, 65534)


@pytest.fixture
def pooled(tmp_path: Path) -> WorkspaceManager:
    return WorkspaceManager(tmp_path / "workspaces", pool_size=1)


def _prepare(manager: WorkspaceManager, source, task_id: int, **kwargs):
    workspace = manager.prepare(task_id, "acme/app", source.url, f"forgecrew/run-{task_id}", **kwargs)
    _settle(manager)
    return workspace


def _settle(manager: WorkspaceManager) -> None:
    """Wait for the background refill, as a warm host would have."""
    manager.pool.wait()


def _ready(manager: WorkspaceManager, owner) -> list[str]:
    slot = manager.pool.slot("acme/app", owner)
    return sorted(name for name in os.listdir(slot) if name.startswith("ready-")) if slot.is_dir() else []


def _change(workspace):
    return build_change(workspace, "change", author=BOT, contains_secret=lambda text: "s3cret" in text)


def test_a_task_takes_a_ready_checkout_by_rename_and_the_pool_refills(pooled, source):
    _prepare(pooled, source, 1)
    [entry] = _ready(pooled, None)
    inode = os.stat(pooled.pool.slot("acme/app", None) / entry).st_ino

    second = _prepare(pooled, source, 2)

    assert os.stat(second.checkout).st_ino == inode, "the ready checkout itself became the task's"
    assert git("branch", "--show-current", cwd=second.checkout) == "forgecrew/run-2"
    assert git("status", "--porcelain", cwd=second.checkout) == ""
    assert git("remote", "get-url", "origin", cwd=second.checkout) == source.url
    assert _ready(pooled, None) and _ready(pooled, None) != [entry], "a new one was built, never the same twice"


def test_moving_a_ready_checkout_to_a_newer_base_writes_only_the_changed_files(pooled, source):
    source.commit("other.txt", "untouched\n")
    _prepare(pooled, source, 1)
    [entry] = _ready(pooled, None)
    before = os.stat(pooled.pool.slot("acme/app", None) / entry / "other.txt")
    new_head = source.commit("README.md", "changed upstream\n")

    workspace = _prepare(pooled, source, 2)

    assert workspace.head_sha == workspace.base_sha == new_head
    assert (workspace.checkout / "README.md").read_text() == "changed upstream\n"
    after = os.stat(workspace.checkout / "other.txt")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert git("status", "--porcelain", cwd=workspace.checkout) == ""


def test_follow_up_moves_a_ready_checkout_to_the_existing_branch(pooled, source):
    _prepare(pooled, source, 1)
    pushed = source.commit("earlier.txt", "earlier work\n", branch="forgecrew/run-9")
    workspace = _prepare(pooled, source, 9, start_from_branch=True)
    assert workspace.head_sha == pushed and (workspace.checkout / "earlier.txt").exists()
    (workspace.checkout / "later.txt").write_text("later\n")
    assert _change(workspace).files == ["earlier.txt", "later.txt"]


def test_publishing_sees_every_kind_of_change_from_the_kept_stat_data(pooled, source):
    for name, text in (("keep.txt", "keep\n"), ("edit.txt", "edit me\n"), ("gone.txt", "bye\n"),
                       ("old-name.txt", "moving\n"), ("run.sh", "echo hi\n"), ("same-size.txt", "aaaa\n")):
        source.commit(name, text)
    _prepare(pooled, source, 1)
    workspace = _prepare(pooled, source, 2)
    assert workspace.clean_index.is_file() and workspace.clean_index_sha == workspace.head_sha
    top = workspace.checkout
    (top / "edit.txt").write_text("edited\n")
    (top / "gone.txt").unlink()
    (top / "old-name.txt").rename(top / "new-name.txt")
    os.chmod(top / "run.sh", 0o755)
    (top / "link").symlink_to("keep.txt")
    (top / "deep" / "er").mkdir(parents=True)
    (top / "deep" / "er" / "added.txt").write_text("new\n")
    stamp = os.stat(top / "same-size.txt")
    (top / "same-size.txt").write_text("bbbb\n")  # same size, mtime put back: only ctime tells
    os.utime(top / "same-size.txt", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    (top / ".git" / "index").write_bytes(b"the agent's own index is never read")

    change = _change(workspace)

    assert change.files == ["deep/er/added.txt", "edit.txt", "gone.txt", "link", "new-name.txt", "old-name.txt",
                            "run.sh", "same-size.txt"]
    listing = git("ls-tree", "-r", change.commit, cwd=change.git_dir)
    assert "100755 blob" in next(line for line in listing.splitlines() if line.endswith("\trun.sh"))
    assert "120000 blob" in next(line for line in listing.splitlines() if line.endswith("\tlink"))
    assert git("show", f"{change.commit}:same-size.txt", cwd=change.git_dir) == "bbbb"


def test_a_same_size_edit_in_the_checkouts_own_second_is_published(tmp_path, source):
    """A cold pool writes the checkout inline; an edit within the same second keeps size and mtime second."""
    manager = WorkspaceManager(tmp_path / "cold", pool_size=1)
    manager.pool.refill_in_background = lambda *args: None  # stay cold: every prepare builds inline
    workspaces = [manager.prepare(task, "acme/app", source.url, f"forgecrew/run-{task}") for task in (1, 2, 3)]
    for workspace in workspaces:
        (workspace.checkout / "README.md").write_text("HELLO\n")
    time.sleep(1.1)  # publishing comes later: its copy of the index must still know the entries were racy
    for workspace in workspaces:
        assert _change(workspace).files == ["README.md"]


@pytest.mark.parametrize("make, refusal", [
    (lambda top: (top / ".env").write_text("A=1\n"), "never publishes"),
    (lambda top: (top / "out").symlink_to("/etc/passwd"), "leading out of the repository"),
    (lambda top: (top / "README.md").write_text(f"hello\ntoken {FAKE_TOKEN}\n"), "access token"),
    (lambda top: (top / "conf.py").write_text("KEY = 's3cret'\n"), "forgecrew's own secrets"),
])
def test_the_scan_still_refuses_on_a_pooled_checkout(pooled, source, make, refusal):
    _prepare(pooled, source, 1)
    workspace = _prepare(pooled, source, 2)
    make(workspace.checkout)
    with pytest.raises(ChangeRefused, match=refusal):
        _change(workspace)


@pytest.mark.parametrize("open_root", [False, True], ids=["chowned-after", "built-as-the-user"])
def test_a_root_worker_gets_checkouts_owned_by_the_sandbox_user(tmp_path, source, open_root):
    if os.geteuid() != 0:
        pytest.skip("needs root to give files away")
    top = Path(tempfile.mkdtemp(prefix="forgecrew-open-")) if open_root else tmp_path  # pytest's is 0700
    os.chmod(top, 0o755 if open_root else 0o700)
    pooled = WorkspaceManager(top / "workspaces", pool_size=1)
    _prepare(pooled, source, 1, owner=SANDBOX_USER)
    (source.work / "docs").mkdir()
    source.commit("docs/new.md", "upstream\n")
    workspace = _prepare(pooled, source, 2, owner=SANDBOX_USER)
    for path in (workspace.checkout, workspace.checkout / "README.md", workspace.checkout / "docs" / "new.md",
                 workspace.checkout / "docs", workspace.checkout / ".git" / "index", workspace.checkout / ".git" / "HEAD"):
        assert (os.stat(path).st_uid, os.stat(path).st_gid) == SANDBOX_USER, path
    assert not _ready(pooled, None), "entries are kept per owner"
    (workspace.checkout / "docs" / "new.md").write_text("edited\n")
    assert _change(workspace).files == ["docs/new.md"]


def test_an_unprivileged_worker_uses_the_pool():
    if os.geteuid() != 0:
        pytest.skip("runs the worker's code as uid 4242 from root")
    root, home, forge = owned_dir("forgecrew-pool-"), owned_dir("forgecrew-home-"), owned_dir("forgecrew-src-")
    try:
        source = Source(forge)
        give(forge)
        script = (f"from workers.workspace import WorkspaceManager\n"
                  f"m = WorkspaceManager({str(root)!r}, pool_size=1)\n"
                  f"for task in (1, 2):\n"
                  f"    w = m.prepare(task, 'acme/app', {source.url!r}, f'forgecrew/run-{{task}}')\n"
                  f"    m.pool.refill('acme/app', m.mirror_path('acme/app'), '', None)\n"
                  f"print(w.checkout, open(w.checkout / 'README.md').read().strip())\n")
        done = subprocess.run([*prefix(UID, home=home), sys.executable, "-c", script], capture_output=True,
                              text=True, cwd=str(Path(__file__).resolve().parents[1]), timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [str(root / "tasks" / "2" / "repo"), "hello"]
        assert os.stat(root / "tasks" / "2" / "repo" / "README.md").st_uid == UID
    finally:
        # a background refill's git may still be finishing a checkout it began as the script exited
        for _ in range(20):
            if subprocess.run(["rm", "-rf", str(root), str(home), str(forge)]).returncode == 0:
                break
            time.sleep(0.5)


def test_old_trees_go_to_the_trash_with_one_rename(pooled, source):
    first = _prepare(pooled, source, 5)
    inode = os.stat(first.checkout).st_ino
    pool = CheckoutPool(pooled.root, 1)
    moved = pool.discard(first.checkout)
    assert moved is not None and os.stat(moved).st_ino == inode and not first.checkout.exists()
    os.chmod(moved, 0o500)
    assert pool.empty_trash() == 1 and os.listdir(pool.trash) == []


def test_gc_moves_finished_trees_aside_and_never_touches_held_ones(pooled, source):
    done, held = _prepare(pooled, source, 1), _prepare(pooled, source, 2)
    done.mark_finished("failed")
    held.mark_finished("failed")
    with pooled.hold(2):
        removed = pooled.gc(timedelta(0), active_task_ids=set())
    assert removed == [done.path] and not done.path.exists() and held.checkout.joinpath("README.md").exists()
    assert [name for name in os.listdir(pooled.pool.trash) if not name.startswith("deleting-")] == []
    assert _prepare(pooled, source, 3).checkout.joinpath("README.md").read_text() == "hello\n"


def test_gc_drops_ready_checkouts_no_task_took_within_the_retention(pooled, source):
    _prepare(pooled, source, 1)
    [entry] = _ready(pooled, None)
    assert pooled.gc(timedelta(days=7), active_task_ids={1}) == [] and _ready(pooled, None) == [entry]
    old = time.time() - 8 * 86400
    os.utime(pooled.pool.slot("acme/app", None) / entry, (old, old))
    pooled.gc(timedelta(days=7), active_task_ids={1})
    assert _ready(pooled, None) == [] and pooled.task_dir(1).joinpath("repo", "README.md").exists()


def test_an_unprivileged_worker_trashes_a_tree_the_agent_made_read_only():
    if os.geteuid() != 0:
        pytest.skip("runs the worker's code as uid 4242 from root")
    root, home = owned_dir("forgecrew-trash-"), owned_dir("forgecrew-home-")
    try:
        script = (f"import os, pathlib\nfrom workers.checkout_pool import CheckoutPool\n"
                  f"top = pathlib.Path({str(root)!r})\n(top / 'tasks' / '1' / 'repo' / 'src').mkdir(parents=True)\n"
                  f"(top / 'tasks' / '1' / 'repo' / 'src' / 'a.py').write_text('x')\n"
                  f"os.chmod(top / 'tasks' / '1' / 'repo' / 'src', 0o500)\nos.chmod(top / 'tasks' / '1' / 'repo', 0o500)\n"
                  f"pool = CheckoutPool(top, 1)\npool.discard(top / 'tasks' / '1' / 'repo')\n"
                  f"print(pool.empty_trash(), os.listdir(top / 'tasks' / '1'), os.listdir(pool.trash))\n")
        done = subprocess.run([*prefix(UID, home=home), sys.executable, "-c", script], capture_output=True,
                              text=True, cwd=str(Path(__file__).resolve().parents[1]), timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "1 [] []"
    finally:
        subprocess.run(["rm", "-rf", str(root), str(home)], check=True)
