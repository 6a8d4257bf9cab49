"""Publishing a pooled checkout lists only the directories whose stat changed, and still misses nothing.

Each change is made the way a task makes it: by a command in the real sandbox, or by the worker's
file tools. Every test also checks that the short cut was taken (no `git add --all` of the whole
tree), so a pass means the directory snapshot found the change, not the old full walk.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from common.settings import Settings
from tests.conftest import task_paths
from tests.git_source import Source, git
from workers import change as change_module
from workers.change import ChangeRefused, build_change
from workers.dir_snapshot import DirSnapshot, new_name_candidates, take
from workers.sandbox import make_sandbox
from workers.tools.toolbox import Toolbox
from workers.workspace import Workspace, WorkspaceManager

BOT = ("forgecrew[bot]", "bot@example.com")
TREE = {
    "README.md": "hello\n",
    ".gitignore": "*.log\nbuild/\n",
    "src/a/b/c/deep.py": "print('deep')\n",
    "src/a/b/c/gone.py": "print('gone')\n",
    "src/a/b/c/run.sh": "echo run\n",
    "src/a/b/c/twin.py": "print('twin')\n",
    "src/a/b/other.py": "print('other')\n",
    "src/x/y/leaf.txt": "leaf\n",
    "src/x/y/z/file.txt": "z\n",
    "lib/untouched/u.txt": "untouched\n",
}


@pytest.fixture
def tree_source(tmp_path: Path) -> Source:
    source = Source(tmp_path)
    for name, text in TREE.items():
        (source.work / name).parent.mkdir(parents=True, exist_ok=True)
        (source.work / name).write_text(text)
    git("add", "--all", cwd=source.work)
    git("commit", "--quiet", "-m", "tree", cwd=source.work)
    git("push", "--quiet", "origin", "HEAD:refs/heads/main", cwd=source.work)
    return source


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Every git command publishing runs, to tell the short cut from the whole-tree walk."""
    seen: list[tuple[str, ...]] = []
    real = change_module._PrivateGit.ok

    def recording(self, *args: str, env=None):  # type: ignore[no-untyped-def]
        seen.append(args)
        return real(self, *args, env=env)

    monkeypatch.setattr(change_module._PrivateGit, "ok", recording)
    return seen


@pytest.fixture
def task(tmp_path: Path, tree_source: Source) -> tuple[Workspace, Toolbox]:
    """A warm host's second task: its checkout came from the pool, with the sandbox the worker uses."""
    top = tmp_path / "open"
    top.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(top, 0o755)
    sandbox = make_sandbox(Settings(database_url="sqlite://"))
    owner = getattr(getattr(sandbox, "config", None), "run_as", None)
    manager = WorkspaceManager(top / "workspaces", pool_size=1)
    for task_id in (1, 2):
        workspace = manager.prepare(task_id, "acme/app", tree_source.url, f"forgecrew/run-{task_id}", owner=owner)
        manager.pool.wait()
    paths = task_paths(workspace.checkout)
    sandbox.prepare(paths)
    return workspace, Toolbox(workspace.checkout, sandbox=sandbox, paths=paths)


def _publish(workspace: Workspace) -> change_module.Change:
    result = build_change(workspace, "change", author=BOT, contains_secret=lambda text: False)
    assert result is not None
    return result


def _walked_whole_tree(calls: list[tuple[str, ...]]) -> bool:
    return any(args[:2] == ("add", "--all") and args[-1] == "." for args in calls)


def _sh(toolbox: Toolbox, command: str) -> None:
    result = toolbox.call("run_command", {"command": command})
    assert not result.is_error, result.content


def _tree(change: change_module.Change) -> dict[str, str]:
    """path -> mode of every entry of the published commit."""
    listing = git("ls-tree", "-r", change.commit, cwd=change.git_dir).splitlines()
    return {line.split("\t", 1)[1]: line.split()[0] for line in listing}


def test_the_snapshot_is_moved_out_of_the_agents_reach(task):
    workspace, _ = task
    assert workspace.clean_dirs.is_file()
    assert not list(workspace.checkout.rglob("forgecrew-clean-dirs*"))
    snapshot = DirSnapshot.load(workspace.clean_dirs)
    assert snapshot is not None and snapshot.commit == workspace.clean_index_sha
    assert snapshot.dirs["src/a/b/c"] is not None, "settled at refill, so not racy"


def test_commands_changing_files_deep_in_the_tree_are_all_published(task, calls):
    workspace, toolbox = task
    _sh(toolbox, "rm src/a/b/c/gone.py && chmod +x src/a/b/c/run.sh && echo changed > src/a/b/c/deep.py"
                 " && echo new > src/a/b/c/created.py && ln -s deep.py src/a/b/c/alias.py"
                 " && mkdir -p src/x/y/z/new/dir && echo n > src/x/y/z/new/dir/n.txt"
                 " && ln src/a/b/c/twin.py src/x/y/hardlink.py && mv src/x/y/leaf.txt src/moved.txt"
                 " && rm src/x/y/z/file.txt && ln -s ../../../../README.md src/x/y/z/file.txt")

    change = _publish(workspace)

    assert not _walked_whole_tree(calls)
    assert change.files == ["src/a/b/c/alias.py", "src/a/b/c/created.py", "src/a/b/c/deep.py", "src/a/b/c/gone.py",
                            "src/a/b/c/run.sh", "src/moved.txt", "src/x/y/hardlink.py", "src/x/y/leaf.txt",
                            "src/x/y/z/file.txt", "src/x/y/z/new/dir/n.txt"]
    tree = _tree(change)
    assert tree["src/a/b/c/run.sh"] == "100755" and tree["src/a/b/c/alias.py"] == "120000"
    assert tree["src/x/y/z/file.txt"] == "120000"
    assert git("show", f"{change.commit}:src/a/b/c/deep.py", cwd=change.git_dir) == "changed"


def test_file_tool_writes_are_published(task, calls):
    workspace, toolbox = task
    for path, text in (("src/x/y/z/file.txt", "edited\n"), ("src/x/y/z/tool-new.txt", "from the tool\n"),
                       ("docs/guide/intro.md", "# new directory\n")):
        result = toolbox.call("write_file", {"path": path, "content": text})
        assert not result.is_error, result.content

    change = _publish(workspace)

    assert not _walked_whole_tree(calls)
    assert change.files == ["docs/guide/intro.md", "src/x/y/z/file.txt", "src/x/y/z/tool-new.txt"]


def test_a_file_turned_directory_or_a_directory_turned_link_walks_the_tree_and_is_published(task, calls):
    workspace, toolbox = task
    _sh(toolbox, "rm src/a/b/other.py && mkdir src/a/b/other.py && echo in > src/a/b/other.py/inside.txt"
                 " && rm -r src/x/y/z && ln -s ../../lib src/x/y/z")

    change = _publish(workspace)

    assert _walked_whole_tree(calls), "update-index would read src/x/y/z/file.txt through the new link"
    tree = _tree(change)
    assert tree["src/x/y/z"] == "120000" and "src/x/y/z/file.txt" not in tree
    assert "src/a/b/other.py/inside.txt" in tree and "src/a/b/other.py" not in tree


def test_a_directory_turned_file_and_a_recreated_directory_are_published(task, calls):
    workspace, toolbox = task
    _sh(toolbox, "rm -r src/x/y/z && echo now-a-file > src/x/y/z"
                 " && rm -r lib/untouched && mkdir lib/untouched && echo again > lib/untouched/u.txt"
                 " && echo fresh > lib/untouched/second.txt")

    change = _publish(workspace)

    assert not _walked_whole_tree(calls)
    assert change.files == ["lib/untouched/second.txt", "lib/untouched/u.txt", "src/x/y/z", "src/x/y/z/file.txt"]
    assert _tree(change)["src/x/y/z"] == "100644"
    assert git("show", f"{change.commit}:lib/untouched/u.txt", cwd=change.git_dir) == "again"


def test_ignored_files_stay_out(task, calls):
    workspace, toolbox = task
    _sh(toolbox, "echo noise > src/a/b/c/debug.log && mkdir -p src/x/build && echo o > src/x/build/out.o"
                 " && echo kept > src/x/kept.txt")

    change = _publish(workspace)

    assert not _walked_whole_tree(calls)
    assert change.files == ["src/x/kept.txt"]


def test_nothing_beyond_a_link_is_listed(task, calls):
    workspace, _ = task
    outside = workspace.path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not the repository's\n")
    snapshot = DirSnapshot.load(workspace.clean_dirs)
    assert snapshot is not None
    os.rename(workspace.checkout / "lib" / "untouched", workspace.path / "kept-aside")
    (workspace.checkout / "lib" / "untouched").symlink_to(outside)

    candidates = new_name_candidates(workspace.checkout, snapshot)

    assert "lib/untouched" in candidates
    assert not [path for path in candidates if path.startswith("lib/untouched/")]
    with pytest.raises(ChangeRefused, match="lib/untouched is a symbolic link leading out"):
        _publish(workspace)
    assert "secret" not in str(calls)


def test_a_snapshot_of_another_commit_or_an_unreadable_one_walks_the_whole_tree(task, calls):
    workspace, toolbox = task
    _sh(toolbox, "echo new > src/x/y/new.txt")
    workspace.clean_dirs.write_text("{not json")

    assert _publish(workspace).files == ["src/x/y/new.txt"]
    assert _walked_whole_tree(calls)


def test_an_unchanged_directory_is_not_listed_and_a_changed_one_is(tmp_path):
    for name in ("same", "changed", "backdated", "recreated"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tracked").write_text("t\n")
    old = time.time() - 10
    for name in ("", "same", "changed", "backdated", "recreated"):
        os.utime(tmp_path / name, (old, old))
    time.sleep(1.1)  # the snapshot must not see them as racy
    snapshot = take(tmp_path, "c0ffee", ["same", "changed", "backdated", "recreated"])

    (tmp_path / "changed" / "new.txt").write_text("n\n")
    (tmp_path / "backdated" / "new.txt").write_text("n\n")
    os.utime(tmp_path / "backdated", (old, old))  # mtime put back: ctime still tells
    os.rename(tmp_path / "recreated", tmp_path / "aside")
    (tmp_path / "recreated").mkdir()
    (tmp_path / "recreated" / "tracked").write_text("t\n")

    candidates = new_name_candidates(tmp_path, snapshot)

    assert "same/tracked" not in candidates
    assert {"changed/new.txt", "backdated/new.txt", "recreated/tracked", "aside"} <= set(candidates)


def test_a_directory_changed_within_the_racy_window_is_always_listed(tmp_path):
    (tmp_path / "fresh").mkdir()
    snapshot = take(tmp_path, "c0ffee", ["fresh"])
    (tmp_path / "fresh" / "same-tick.txt").write_text("its directory's ctime may not have moved\n")
    assert snapshot.dirs["fresh"] is None
    assert new_name_candidates(tmp_path, snapshot) == ["fresh/same-tick.txt"]
