"""What the agent's shell can write into .git or the mirror never runs with the worker's secrets.

Each test plays an agent that used `run_command` to plant something (hooks, fsmonitor, filter
drivers, a proxy, a replaced .git), then lets the worker commit, push or fetch as it does.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from common.gitsafe import UnsafeRepository, base_env, mirror_config, write_config
from tests.git_source import git
from workers.workspace import SecretInChange, commit_all, push

WORKER_SECRET = "sk-ant-worker-secret-0123456789"


@pytest.fixture(autouse=True)
def worker_secret_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker process holds the cluster's secrets in its environment, as deployed."""
    monkeypatch.setenv("FORGECREW_ANTHROPIC_API_KEY", WORKER_SECRET)


def spy_script(path: Path, evidence: Path) -> Path:
    """An executable that records that it ran, and the environment it ran with."""
    path.write_text(f"#!/bin/sh\nenv > {evidence}\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def agent_git(*args: str, cwd: Path) -> None:
    """A git command as the agent's shell would run it (no hardening)."""
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_worker_git_environment_holds_no_secret_of_the_worker():
    env = base_env()
    assert WORKER_SECRET not in "".join(env.values())
    assert not [key for key in env if key.startswith("FORGECREW_")]
    assert env["GIT_CONFIG_NOSYSTEM"] == "1" and env["GIT_CONFIG_GLOBAL"] == os.devnull


def test_planted_fsmonitor_hooks_and_filters_do_not_run_on_commit(prepare, tmp_path):
    workspace = prepare(1)
    evidence = tmp_path / "ran.txt"
    spy = spy_script(tmp_path / "spy.sh", evidence)
    agent_git("config", "core.fsmonitor", str(spy), cwd=workspace.checkout)
    agent_git("config", "filter.sneak.clean", f"{spy} %f", cwd=workspace.checkout)
    (workspace.checkout / ".gitattributes").write_text("*.py filter=sneak\n")
    hooks = workspace.checkout / ".git" / "hooks"
    for hook in ("pre-commit", "post-index-change", "reference-transaction", "post-commit"):
        spy_script(hooks / hook, evidence)
    (workspace.checkout / "change.py").write_text("print('hi')\n")

    sha = commit_all(workspace, "change", "bot", "bot@example.com")

    assert sha is not None
    assert not evidence.exists(), "a planted hook, fsmonitor or filter ran inside the worker's git"
    assert "core.fsmonitor=" not in git("config", "--list", "--local", cwd=workspace.checkout)
    assert git("show", "HEAD:change.py", cwd=workspace.checkout) == "print('hi')"


def test_push_ignores_a_planted_proxy_and_pushes_to_the_recorded_url(prepare, source, tmp_path):
    workspace = prepare(2)
    agent_git("config", "http.proxy", "http://127.0.0.1:9", cwd=workspace.checkout)
    agent_git("remote", "set-url", "origin", str(tmp_path / "elsewhere.git"), cwd=workspace.checkout)
    (workspace.checkout / "a.txt").write_text("a\n")
    commit_all(workspace, "a", "bot", "bot@example.com")

    push(workspace, {})

    assert source.rev(f"refs/heads/{workspace.branch}") == git("rev-parse", "HEAD", cwd=workspace.checkout)
    assert git("remote", "get-url", "origin", cwd=workspace.checkout) == source.url
    assert "http.proxy=" not in git("config", "--list", "--local", cwd=workspace.checkout)


def test_planted_mirror_hook_and_config_are_gone_before_the_next_fetch(manager, prepare, source, tmp_path):
    prepare(3)
    mirror = manager.mirror_path("acme/app")
    evidence = tmp_path / "mirror-hook.txt"
    spy_script(mirror / "hooks" / "reference-transaction", evidence)
    agent_git("config", "core.fsmonitor", str(tmp_path / "spy.sh"), cwd=mirror)
    agent_git("config", "http.proxy", "http://127.0.0.1:9", cwd=mirror)
    new_sha = source.commit("NEW.md", "new\n")

    fresh = prepare(4, git_env={"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
                                "GIT_CONFIG_VALUE_0": "Authorization: Bearer ghs_secret0123456789abcd"})

    assert fresh.base_sha == new_sha
    assert not evidence.exists(), "a hook planted in the shared mirror ran during the next task's fetch"
    mirror_config = git("config", "--list", "--local", cwd=mirror)
    assert "http.proxy=" not in mirror_config and "core.fsmonitor=" not in mirror_config
    assert git("config", "gc.auto", cwd=mirror) == "0"


def test_a_replaced_dot_git_is_refused(prepare, tmp_path):
    workspace = prepare(5)
    other = tmp_path / "other-repo"
    agent_git("init", "--quiet", str(other), cwd=tmp_path)
    dot_git = workspace.checkout / ".git"
    subprocess.run(["rm", "-rf", str(dot_git)], check=True)
    dot_git.write_text(f"gitdir: {other / '.git'}\n")

    with pytest.raises(UnsafeRepository, match="no longer the directory"):
        commit_all(workspace, "x", "bot", "bot@example.com")


def test_borrowed_objects_point_at_the_mirror_again(manager, prepare):
    workspace = prepare(6)
    alternates = workspace.checkout / ".git" / "objects" / "info" / "alternates"
    alternates.write_text("/nonexistent/objects\n")
    (workspace.checkout / ".git" / "commondir").write_text("/tmp\n")
    (workspace.checkout / "b.txt").write_text("b\n")

    assert commit_all(workspace, "b", "bot", "bot@example.com") is not None
    assert alternates.read_text().strip() == str(manager.mirror_path("acme/app") / "objects")
    assert not (workspace.checkout / ".git" / "commondir").exists()


def test_a_change_holding_a_configured_secret_is_never_committed(prepare):
    workspace = prepare(7)
    before = git("rev-parse", "HEAD", cwd=workspace.checkout)
    (workspace.checkout / "config.py").write_text(f"KEY = '{WORKER_SECRET}'\n")
    (workspace.checkout / "fine.py").write_text("x = 1\n")

    with pytest.raises(SecretInChange, match="config.py"):
        commit_all(workspace, "leak", "bot", "bot@example.com", contains_secret=lambda text: WORKER_SECRET in text)

    assert git("rev-parse", "HEAD", cwd=workspace.checkout) == before
    assert git("diff", "--cached", "--name-only", cwd=workspace.checkout) == ""


def test_config_is_written_so_git_reads_back_every_value(tmp_path):
    repo = tmp_path / "r.git"
    agent_git("init", "--quiet", "--bare", str(repo), cwd=tmp_path)
    odd = 'file:///srv/git/a "quoted" \\ back#slash;semi.git'
    write_config(repo, mirror_config(odd, (("gc.auto", "0"),)))
    assert git("config", "--get", "remote.origin.url", cwd=repo) == odd
    assert git("config", "--get-all", "remote.origin.fetch", cwd=repo).splitlines() == [
        "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]
    assert git("config", "--bool", "core.bare", cwd=repo) == "true"
