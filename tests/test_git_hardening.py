"""What the agent can do to its checkout's git never reaches what the worker publishes or runs.

Each test plays an agent that used its shell to plant something in the checkout (hooks, an
fsmonitor, filter drivers, a proxy, commits of its own, a replaced .git, planted objects),
then lets the worker build and push the change as it does. The worker never reads the
checkout's .git: it builds its own commit from the files, in a git directory of its own.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from common.forge.base import PushRejected
from common.forge.local import LocalForge
from common.gitsafe import base_env, mirror_config, write_config
from common.settings import Settings
from tests.git_source import IDENTITY, git
from workers.change import ChangeRefused, build_change

WORKER_SECRET = "sk-ant-worker-secret-0123456789"
BOT = ("forgecrew[bot]", "bot@example.com")


@pytest.fixture(autouse=True)
def worker_secret_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker process holds the cluster's secrets in its environment, as deployed."""
    monkeypatch.setenv("FORGECREW_ANTHROPIC_API_KEY", WORKER_SECRET)


@pytest.fixture
def forge(tmp_path: Path) -> LocalForge:
    """The local forge over the `source` fixture's bare repository (tmp/forge/acme/app.git)."""
    return LocalForge(Settings(database_url="sqlite://", local_forge_root=tmp_path / "forge"))


def spy_script(path: Path, evidence: Path) -> Path:
    """An executable that records that it ran, and the environment it ran with."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\nenv > {evidence}\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def agent_git(*args: str, cwd: Path) -> str:
    """A git command as the agent's shell would run it (no hardening, its own identity)."""
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, **IDENTITY}).stdout.strip()


def no_secret(text: str) -> bool:
    return WORKER_SECRET in text


def publish(forge: LocalForge, workspace, message: str = "change"):  # type: ignore[no-untyped-def]
    change = build_change(workspace, message, author=BOT, contains_secret=no_secret)
    assert change is not None
    forge.push_branch("acme/app", source=change.git_dir, commit=change.commit, branch=workspace.branch,
                      expected=workspace.remote_branch_sha)
    workspace.record_push(change.commit)
    return change


def test_worker_git_environment_holds_no_secret_of_the_worker():
    env = base_env()
    assert WORKER_SECRET not in "".join(env.values())
    assert not [key for key in env if key.startswith("FORGECREW_")]
    assert env["GIT_CONFIG_NOSYSTEM"] == "1" and env["GIT_CONFIG_GLOBAL"] == os.devnull


def test_planted_fsmonitor_hooks_and_filters_do_not_run_when_the_worker_builds(prepare, forge, source, tmp_path):
    workspace = prepare(1)
    evidence = tmp_path / "ran.txt"
    spy = spy_script(tmp_path / "spy.sh", evidence)
    agent_git("config", "core.fsmonitor", str(spy), cwd=workspace.checkout)
    agent_git("config", "filter.sneak.clean", f"{spy} %f", cwd=workspace.checkout)
    agent_git("config", "http.proxy", "http://127.0.0.1:9", cwd=workspace.checkout)
    agent_git("remote", "set-url", "origin", str(tmp_path / "elsewhere.git"), cwd=workspace.checkout)
    (workspace.checkout / ".gitattributes").write_text("*.py filter=sneak\n")
    for hook in ("pre-commit", "post-index-change", "reference-transaction", "post-commit", "pre-push"):
        spy_script(workspace.checkout / ".git" / "hooks" / hook, evidence)
    (workspace.checkout / "change.py").write_text("print('hi')\n")

    change = publish(forge, workspace)

    assert not evidence.exists(), "a planted hook, fsmonitor or filter ran inside the worker's git"
    assert source.rev(f"refs/heads/{workspace.branch}") == change.commit
    assert git("show", f"{change.commit}:change.py", cwd=source.bare) == "print('hi')"
    assert git("log", "-1", "--format=%an <%ae> %P", change.commit, cwd=source.bare) == (
        f"forgecrew[bot] <bot@example.com> {workspace.head_sha}")


def test_the_agents_own_commits_are_ignored_only_the_files_count(prepare, forge, source):
    workspace = prepare(2)
    token = "ghp_" + "A1b2C3d4E5f6G7h8I9j0" * 2
    (workspace.checkout / "notes.txt").write_text(f"token {token}\n")
    agent_git("add", "notes.txt", cwd=workspace.checkout)
    agent_git("commit", "-qm", "wip", cwd=workspace.checkout)
    agent_git("rm", "-q", "notes.txt", cwd=workspace.checkout)
    agent_git("commit", "-qm", "remove it again", cwd=workspace.checkout)
    (workspace.checkout / "feature.py").write_text("x = 1\n")

    change = publish(forge, workspace)

    history = git("log", "--format=%H %s", f"{workspace.head_sha}..{change.commit}", cwd=source.bare)
    assert history.splitlines() == [f"{change.commit} change"]  # one commit of ours; none of the agent's
    assert token not in subprocess.run(["git", "--git-dir", str(source.bare), "log", "-p", "--all"],
                                       capture_output=True, text=True).stdout
    assert change.files == ["feature.py"]


def test_a_token_the_agent_committed_and_kept_is_refused_by_name(prepare, forge, source):
    workspace = prepare(3)
    token = "ghp_" + "Z9y8X7w6V5u4T3s2R1q0" * 2
    (workspace.checkout / "settings.py").write_text(f"TOKEN = '{token}'\n")
    agent_git("add", "settings.py", cwd=workspace.checkout)
    agent_git("commit", "-qm", "add settings", cwd=workspace.checkout)

    with pytest.raises(ChangeRefused) as caught:
        build_change(workspace, "x", author=BOT, contains_secret=no_secret)

    assert "settings.py" in str(caught.value) and token not in str(caught.value)
    assert "access token" in str(caught.value)


@pytest.mark.parametrize("name,content,words", [
    ("config.py", f"KEY = '{WORKER_SECRET}'\n", "forgecrew's own secrets"),
    (".env", "DATABASE_PASSWORD=hunter2\n", "never publishes"),
    ("deploy/id_ed25519", "-----BEGIN OPENSSH PRIVATE KEY-----\n", "never publishes"),
])
def test_secrets_and_refused_files_stop_the_change(prepare, name, content, words):
    workspace = prepare(4)
    (workspace.checkout / name).parent.mkdir(parents=True, exist_ok=True)
    (workspace.checkout / name).write_text(content)
    (workspace.checkout / "fine.py").write_text("x = 1\n")

    with pytest.raises(ChangeRefused, match=words) as caught:
        build_change(workspace, "leak", author=BOT, contains_secret=no_secret)
    assert name in str(caught.value) and content.strip() not in str(caught.value)


def test_a_template_of_a_refused_name_and_an_existing_token_shape_pass(prepare, source):
    source.commit("fixtures.txt", "sample: ghp_" + "0" * 36 + "\n")
    workspace = prepare(5)
    (workspace.checkout / ".env.example").write_text("DATABASE_URL=\n")
    (workspace.checkout / "fixtures.txt").write_text("sample: ghp_" + "0" * 36 + "\nmore: 1\n")
    change = build_change(workspace, "ok", author=BOT, contains_secret=no_secret)
    assert change is not None and change.files == [".env.example", "fixtures.txt"]


def test_links_out_of_the_repository_and_nested_repositories_are_refused(prepare, tmp_path):
    workspace = prepare(6)
    (workspace.checkout / "hostname").symlink_to("/etc/hostname")
    (workspace.checkout / "up").symlink_to("../../../secrets")
    (workspace.checkout / "inside").symlink_to("README.md")  # a link within the repository is fine
    nested = workspace.checkout / "vendor" / "lib"
    nested.mkdir(parents=True)
    agent_git("init", "-q", cwd=nested)
    (nested / "x").write_text("x")
    agent_git("add", "x", cwd=nested)
    agent_git("commit", "-qm", "x", cwd=nested)

    with pytest.raises(ChangeRefused) as caught:
        build_change(workspace, "links", author=BOT, contains_secret=no_secret)
    message = str(caught.value)
    assert "hostname is a symbolic link" in message and "up is a symbolic link" in message
    assert "vendor/lib is a nested git repository" in message and "inside" not in message


def test_a_replaced_dot_git_and_planted_objects_change_nothing(prepare, forge, source, tmp_path):
    workspace = prepare(7)
    other = tmp_path / "other-repo"
    agent_git("init", "--quiet", str(other), cwd=tmp_path)
    subprocess.run(["rm", "-rf", str(workspace.checkout / ".git")], check=True)
    (workspace.checkout / ".git").write_text(f"gitdir: {other / '.git'}\n")
    (workspace.checkout / "b.txt").write_text("b\n")

    change = publish(forge, workspace)

    assert git("show", f"{change.commit}:b.txt", cwd=source.bare) == "b"
    assert change.git_dir == workspace.publish_dir and not (other / ".git" / "index").exists()


def test_nothing_changed_is_none_and_a_moved_branch_is_rejected(prepare, forge, source):
    workspace = prepare(8)
    assert build_change(workspace, "nothing", author=BOT, contains_secret=no_secret) is None
    (workspace.checkout / "c.txt").write_text("c\n")
    publish(forge, workspace)
    source.commit("human.txt", "a person pushed meanwhile", branch=workspace.branch)
    (workspace.checkout / "d.txt").write_text("d\n")
    with pytest.raises(PushRejected, match="someone else pushed"):
        publish(forge, workspace)
    assert git("show", f"{workspace.branch}:human.txt", cwd=source.bare) == "a person pushed meanwhile"


def test_the_local_forge_runs_no_hook_of_its_bare_repository(prepare, forge, source, tmp_path):
    """A push to the local forge is a fetch by the forge side: receive-pack and its hooks never run."""
    evidence = tmp_path / "forge-hook.txt"
    for hook in ("pre-receive", "update", "post-receive", "proc-receive", "reference-transaction"):
        spy_script(source.bare / "hooks" / hook, evidence)
    workspace = prepare(9)
    (workspace.checkout / "e.txt").write_text("e\n")
    change = publish(forge, workspace)
    assert source.rev(f"refs/heads/{workspace.branch}") == change.commit
    assert not evidence.exists(), "a hook of the forge's bare repository ran during the push"


def test_planted_mirror_hook_and_config_are_gone_before_the_next_fetch(manager, prepare, source, tmp_path):
    prepare(10)
    mirror = manager.mirror_path("acme/app")
    evidence = tmp_path / "mirror-hook.txt"
    spy_script(mirror / "hooks" / "reference-transaction", evidence)
    agent_git("config", "core.fsmonitor", str(tmp_path / "spy.sh"), cwd=mirror)
    agent_git("config", "http.proxy", "http://127.0.0.1:9", cwd=mirror)
    new_sha = source.commit("NEW.md", "new\n")

    fresh = prepare(11)

    assert fresh.base_sha == new_sha
    assert not evidence.exists(), "a hook planted in the shared mirror ran during the next task's fetch"
    config = git("config", "--list", "--local", cwd=mirror)
    assert "http.proxy=" not in config and "core.fsmonitor=" not in config
    assert git("config", "gc.auto", cwd=mirror) == "0"


def test_config_is_written_so_git_reads_back_every_value(tmp_path):
    repo = tmp_path / "r.git"
    agent_git("init", "--quiet", "--bare", str(repo), cwd=tmp_path)
    odd = 'file:///srv/git/a "quoted" \\ back#slash;semi.git'
    write_config(repo, mirror_config(odd, (("gc.auto", "0"),)))
    assert git("config", "--get", "remote.origin.url", cwd=repo) == odd
    assert git("config", "--get-all", "remote.origin.fetch", cwd=repo).splitlines() == [
        "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]
    assert git("config", "--bool", "core.bare", cwd=repo) == "true"
