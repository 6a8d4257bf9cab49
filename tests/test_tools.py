"""The agent's tools on a real directory and real processes: confinement, limits, environment."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import task_paths
from workers.sandbox import Limits, Sandbox
from workers.sandbox.environment import safe_env
from workers.tools import CommandPolicy, Toolbox, ToolResult


@pytest.fixture
def root(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "src" / "pkg").mkdir(parents=True)
    (repo / ".git").mkdir()
    (repo / ".git" / "config").write_text("[core]\n")
    (repo / "src" / "pkg" / "app.py").write_text("def main():\n    return 1\n\n\ndef helper():\n    return 1\n")
    (repo / "README.md").write_text("# demo\n")
    return repo


@pytest.fixture
def make_toolbox(root: Path, sandbox: Sandbox):  # type: ignore[no-untyped-def]
    paths = task_paths(root)
    sandbox.prepare(paths)

    def make(**kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("policy", CommandPolicy())
        return Toolbox(root, sandbox=sandbox, paths=paths, **kwargs)

    return make


@pytest.fixture
def toolbox(make_toolbox) -> Toolbox:  # type: ignore[no-untyped-def]
    return make_toolbox(command_timeout=10, output_limit=2_000)


def _running(marker: str) -> list[str]:
    """Live processes on the host whose command line holds `marker` (zombies awaiting a reaper ignored)."""
    listing = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if marker in line and not line.lstrip().startswith("Z")]


def _marker() -> str:
    return f"{100 + uuid.uuid4().int % 800}.{uuid.uuid4().int % 10**6}"


def ok(result: ToolResult) -> str:
    assert not result.is_error, result.content
    return result.content


def error(result: ToolResult) -> str:
    assert result.is_error, result.content
    return result.content


def test_schemas_describe_every_tool(toolbox):
    names = [schema["name"] for schema in toolbox.schemas()]
    assert names == ["list_files", "read_file", "write_file", "edit_file", "search", "run_command"]
    for schema in toolbox.schemas():
        assert schema["description"] and schema["input_schema"]["type"] == "object"


def test_list_files_skips_git_and_honours_depth(toolbox):
    listing = ok(toolbox.call("list_files", {})).splitlines()
    assert listing == ["README.md", "src/", "src/pkg/", "src/pkg/app.py"]
    assert ok(toolbox.call("list_files", {"max_depth": 1})).splitlines() == ["README.md", "src/"]


def test_read_file_numbers_lines_and_takes_a_range(toolbox):
    assert ok(toolbox.call("read_file", {"path": "src/pkg/app.py", "start_line": 5, "end_line": 6})) == (
        "     5\tdef helper():\n     6\t    return 1")
    assert "     1\t# demo" in ok(toolbox.call("read_file", {"path": "README.md"}))


def test_read_file_stops_at_output_limit(toolbox, root):
    (root / "big.txt").write_text("".join(f"line {n}\n" for n in range(5000)))
    content = ok(toolbox.call("read_file", {"path": "big.txt"}))
    assert len(content) < 2_200 and "continue with start_line=" in content


def test_write_file_creates_parents_and_accepts_absolute_inside(toolbox, root):
    ok(toolbox.call("write_file", {"path": "new/dir/file.txt", "content": "hello"}))
    assert (root / "new" / "dir" / "file.txt").read_text() == "hello"
    ok(toolbox.call("write_file", {"path": str(root / "abs.txt"), "content": "abs"}))
    assert (root / "abs.txt").read_text() == "abs"


def test_edit_file_replaces_exactly_one_match(toolbox, root):
    ok(toolbox.call("edit_file", {"path": "src/pkg/app.py", "old_text": "def main():\n    return 1",
                                  "new_text": "def main():\n    return 2"}))
    assert "return 2" in (root / "src/pkg/app.py").read_text()


def test_edit_file_refuses_zero_and_several_matches(toolbox, root):
    before = (root / "src/pkg/app.py").read_text()
    assert "0 matches" in error(toolbox.call("edit_file", {"path": "src/pkg/app.py", "old_text": "absent",
                                                          "new_text": "x"}))
    assert "2 times" in error(toolbox.call("edit_file", {"path": "src/pkg/app.py", "old_text": "return 1",
                                                        "new_text": "return 3"}))
    assert (root / "src/pkg/app.py").read_text() == before
    ok(toolbox.call("edit_file", {"path": "src/pkg/app.py", "old_text": "return 1", "new_text": "return 3",
                                  "replace_all": True}))
    assert (root / "src/pkg/app.py").read_text().count("return 3") == 2


def test_search_finds_matches_with_glob(toolbox):
    assert ok(toolbox.call("search", {"pattern": "def h[a-z]+"})) == "src/pkg/app.py:5:def helper():"
    assert "no matches" in ok(toolbox.call("search", {"pattern": "demo", "glob": "*.py"}))
    assert "README.md:1:# demo" in ok(toolbox.call("search", {"pattern": "demo", "path": "."}))


@pytest.mark.parametrize("path", ["../outside.txt", "/etc/passwd", "src/../../outside.txt"])
def test_paths_outside_the_root_are_refused(toolbox, path):
    for name, args in [("read_file", {"path": path}), ("write_file", {"path": path, "content": "x"}),
                       ("list_files", {"path": path}), ("search", {"pattern": "x", "path": path})]:
        assert "outside the repository" in error(toolbox.call(name, args))
    assert not (toolbox.root.parent / "outside.txt").exists()


def test_symlinks_leading_out_are_refused(toolbox, root, tmp_path):
    (root / "passwd-link").symlink_to("/etc/passwd")
    (root / "etc-dir").symlink_to("/etc")
    (tmp_path / "elsewhere").mkdir()
    (root / "out-dir").symlink_to(tmp_path / "elsewhere")
    assert "outside" in error(toolbox.call("read_file", {"path": "passwd-link"}))
    assert "outside" in error(toolbox.call("read_file", {"path": "etc-dir/hostname"}))
    assert "outside" in error(toolbox.call("write_file", {"path": "out-dir/planted.txt", "content": "x"}))
    assert "outside" in error(toolbox.call("edit_file", {"path": "passwd-link", "old_text": "root", "new_text": "x"}))
    assert not (tmp_path / "elsewhere" / "planted.txt").exists()


def test_writing_into_git_dir_is_refused(toolbox, root):
    assert ".git" in error(toolbox.call("write_file", {"path": ".git/hooks/pre-commit", "content": "evil"}))
    assert ".git" in error(toolbox.call("edit_file", {"path": ".git/config", "old_text": "[core]", "new_text": "x"}))
    assert not (root / ".git" / "hooks").exists()


def test_bad_calls_come_back_as_errors(toolbox):
    assert "unknown tool" in error(toolbox.call("delete_everything", {}))
    assert "missing required" in error(toolbox.call("read_file", {}))
    assert "must be a integer" in error(toolbox.call("read_file", {"path": "README.md", "start_line": "x"}))
    assert "no argument" in error(toolbox.call("read_file", {"path": "README.md", "mode": "rb"}))
    assert "no such file" in error(toolbox.call("read_file", {"path": "missing.txt"}))
    assert "is a directory" in error(toolbox.call("read_file", {"path": "src"}))
    assert "JSON object" in error(toolbox.call("run_command", None))


def test_run_command_runs_in_the_checkout(toolbox, root):
    content = ok(toolbox.call("run_command", {"command": "pwd && ls"}))
    assert content.startswith("exit code 0") and "/workspace/repo" in content and "README.md" in content
    failed = error(toolbox.call("run_command", {"command": "echo oops >&2; exit 3"}))
    assert failed.startswith("exit code 3") and "oops" in failed


def test_hanging_command_and_its_children_are_killed(toolbox):
    marker = _marker()
    result = toolbox.call("run_command", {"command": f"echo started; sleep {marker} & sleep {marker}", "timeout": 1})
    content = error(result)
    assert "killed after the 1s time limit" in content and "started" in content
    assert _running(f"sleep {marker}") == []


def test_background_leftovers_are_stopped_when_command_ends(toolbox):
    marker = _marker()
    content = ok(toolbox.call("run_command", {"command": f"sleep {marker} & setsid sleep {marker} & echo bye"}))
    assert "were stopped when it returned" in content and "bye" in content
    assert _running(f"sleep {marker}") == []
    assert "were stopped" not in ok(toolbox.call("run_command", {"command": "echo alone"}))


def test_long_output_keeps_head_and_tail(toolbox):
    content = ok(toolbox.call("run_command", {"command": "seq 1 100000"}))
    assert content.startswith("exit code 0\n1\n2\n") and content.rstrip().endswith("99999\n100000")
    assert "bytes of output cut" in content and len(content) < 2_300


def test_command_environment_is_an_allowlist(make_toolbox, monkeypatch):
    for name in ("FORGECREW_GITHUB_TOKEN", "ANTHROPIC_API_KEY", "GITHUB_TOKEN", "GH_TOKEN",
                 "AWS_SECRET_ACCESS_KEY", "FORGECREW_DATABASE_URL"):
        monkeypatch.setenv(name, "leak-me")
    fresh = make_toolbox(env={"EXTRA_SETTING": "given"})
    content = ok(fresh.call("run_command", {"command": "env"}))
    assert "leak-me" not in content
    for prefix in ("FORGECREW_", "ANTHROPIC_", "GITHUB_TOKEN", "GH_TOKEN", "AWS_"):
        assert f"\n{prefix}" not in content
    assert "HOME=/home/agent" in content and "CI=true" in content and "EXTRA_SETTING=given" in content


def test_safe_env_is_an_allowlist_plus_what_the_caller_adds(monkeypatch):
    monkeypatch.setenv("GH_TOKEN", "leak-me")
    env = safe_env("/home/agent", "/tmp", {"PYTHONPATH": "src"})
    assert set(env) >= {"PATH", "HOME", "TMPDIR", "LANG", "TERM", "CI", "PYTHONPATH"}
    assert "GH_TOKEN" not in env and env["HOME"] == "/home/agent"


@pytest.mark.parametrize("command", ["sudo ls", "cd src && git push origin main", "git -C . remote -v",
                                     "FOO=1 ssh host", "echo $(scp a b)", "bash -c 'git push'"])
def test_denied_commands_are_refused(toolbox, command):
    assert "not allowed" in error(toolbox.call("run_command", {"command": command}))


def test_allowlist_policy(make_toolbox):
    box = make_toolbox(policy=CommandPolicy(allowed=("pytest", "git status")))
    assert "not an allowed command" in error(box.call("run_command", {"command": "rm -rf src"}))
    assert "not an allowed command" in error(box.call("run_command", {"command": "git status; curl x"}))
    assert "not allowed" in error(make_toolbox(policy=CommandPolicy(allowed=("sudo",))).call(
        "run_command", {"command": "sudo true"}))
    assert ok(box.call("run_command", {"command": "cd src && git status --short || true"}))


def test_processes_ignoring_sigterm_are_killed(toolbox):
    marker = _marker()
    command = f"trap '' TERM; sleep {marker} & sleep {marker}"
    content = error(toolbox.call("run_command", {"command": command, "timeout": 0.5}))
    assert "killed" in content
    assert _running(f"sleep {marker}") == []


def test_test_runner_kills_a_hanging_suite_and_reports_it(tmp_path: Path, sandbox: Sandbox) -> None:
    from workers.testrun import detect_test_command, run_tests

    paths = task_paths(tmp_path / "repo")
    (paths.checkout / "package.json").write_text('{"scripts": {"test": "node t.js"}}')
    sandbox.prepare(paths)
    assert detect_test_command(paths.checkout) == "npm test"
    marker = _marker()
    result = run_tests(f"echo starting; sleep {marker} & sleep {marker}", sandbox, paths, Limits(wall_seconds=1))
    assert result.timed_out and not result.passed and "starting" in result.output
    assert "timed out" in result.headline() and _running(f"sleep {marker}") == []
