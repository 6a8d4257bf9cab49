"""The forge token reaches git over real HTTP only through common.gitsafe's credential helper.

Real git against tests.fakes.git_http (git http-backend behind HTTP Basic auth), no mocks:
clones, fetches and pushes work with the credential and fail without it, and the token shows up
in no process's environment or command line, in no error message and in no file on disk.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.forge.base import PushRejected
from common.forge.github import GitHubForge
from common.gitsafe import GitCredential
from common.settings import Settings
from tests.fakes.git_http import FakeGitHTTP, GitRequest
from workers.workspace import CloneFailed, WorkspaceManager

REAL_GIT = shutil.which("git") or "git"  # before any test puts a wrapper first on PATH
REPO = "acme/app"
IDENTITY = {"GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.com",
            "GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "dev@example.com"}


def git(*args: str, cwd: Path, stdin: str | None = None) -> str:
    """Plain git for setting up and inspecting repositories (not forgecrew's hardened run_git)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": os.devnull, **IDENTITY}
    done = subprocess.run([REAL_GIT, *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True)
    assert done.returncode == 0, f"git {' '.join(args)} failed: {done.stderr}"
    return done.stdout.strip()


def commit(git_dir: Path, name: str, text: str, parent: str | None = None) -> str:
    """A commit of one file, written straight into a bare repository with commit-tree."""
    blob = git("hash-object", "-w", "--stdin", cwd=git_dir, stdin=text)
    tree = git("mktree", cwd=git_dir, stdin=f"100644 blob {blob}\t{name}\n")
    return git("commit-tree", tree, "-m", f"add {name}", *(["-p", parent] if parent else []), cwd=git_dir)


def new_bare(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    git("init", "--quiet", "--bare", "--initial-branch=main", str(path), cwd=path.parent)
    return path


def leaks(token: str) -> list[str]:
    """Every /proc/<pid>/{cmdline,environ} we may read that holds the token."""
    found = []
    for entry in Path("/proc").iterdir():
        for part in ("cmdline", "environ") if entry.name.isdigit() else ():
            try:
                if token.encode() in (entry / part).read_bytes():
                    found.append(f"{entry.name}/{part}")
            except OSError:  # gone already, or another user's
                pass
    return found


def files_holding(token: str, *roots: Path) -> list[Path]:
    return [path for root in roots for path in root.rglob("*")
            if path.is_file() and not path.is_symlink() and token.encode() in path.read_bytes()]


@pytest.fixture
def token() -> str:
    return "ghs_" + secrets.token_hex(18)


@pytest.fixture
def served(tmp_path: Path, token: str) -> Iterator[FakeGitHTTP]:
    """acme/app.git, with README.md on main, behind HTTP Basic auth that accepts `token`."""
    bare = new_bare(tmp_path / "served" / "acme" / "app.git")
    git("update-ref", "refs/heads/main", commit(bare, "README.md", "hello\n"), cwd=bare)
    with FakeGitHTTP(tmp_path / "served") as server:
        server.add_token(token)
        yield server


@pytest.fixture
def manager(tmp_path: Path) -> WorkspaceManager:
    return WorkspaceManager(tmp_path / "ws")


def forge(tmp_path: Path, server: FakeGitHTTP, token: str) -> GitHubForge:
    settings = Settings(forge="github", github_token=token, clone_url_template=f"{server.url}/{{full_name}}.git",
                        github_api_url="http://127.0.0.1:9", database_url="sqlite://",
                        workspace_root=tmp_path / "ws", local_forge_root=tmp_path / "forge")
    return GitHubForge(settings)


def clone_url(server: FakeGitHTTP) -> str:
    return f"{server.url}/{REPO}.git"


def test_prepare_clones_over_http_with_the_credential(served: FakeGitHTTP, manager: WorkspaceManager,
                                                      token: str) -> None:
    credential = GitCredential(served.url, "x-access-token", token)
    workspace = manager.prepare(1, REPO, clone_url(served), "forgecrew/run-1", credential=credential)

    assert (workspace.checkout / "README.md").read_text() == "hello\n"
    assert workspace.base_sha == git("rev-parse", "main", cwd=served.root / "acme" / "app.git")
    assert git("config", "remote.origin.url", cwd=manager.mirror_path(REPO)) == clone_url(served)
    first, *rest = served.requests
    assert (first.auth_present, first.status) == (False, 401), "git first asks without a credential"
    assert rest and all(r.auth_valid and r.status == 200 for r in rest)


def test_prepare_without_or_with_a_wrong_credential_fails_without_the_token(
        served: FakeGitHTTP, manager: WorkspaceManager, token: str) -> None:
    with pytest.raises(CloneFailed) as missing:
        manager.prepare(1, REPO, clone_url(served), "forgecrew/run-1")
    wrong = "ghs_" + secrets.token_hex(18)
    with pytest.raises(CloneFailed) as refused:
        manager.prepare(1, REPO, clone_url(served), "forgecrew/run-1",
                        credential=GitCredential(served.url, "x-access-token", wrong))
    host, port = served.url.rsplit(":", 1)
    with pytest.raises(CloneFailed) as elsewhere:  # a credential for another host is never sent here
        manager.prepare(1, REPO, clone_url(served), "forgecrew/run-1",
                        credential=GitCredential(f"{host}:{int(port) + 1}", "x-access-token", token))

    for failure in (missing, refused, elsewhere):
        assert token not in str(failure.value) and wrong not in str(failure.value)
        assert clone_url(served) in str(failure.value)
    assert not any(r.auth_valid for r in served.requests)
    assert any(r.auth_present for r in served.requests), "the wrong token was offered"
    assert not manager.mirror_path(REPO).exists()


def test_every_fetch_gets_the_credential_again(served: FakeGitHTTP, manager: WorkspaceManager, token: str) -> None:
    credential = GitCredential(served.url, "x-access-token", token)
    manager.prepare(1, REPO, clone_url(served), "forgecrew/run-1", credential=credential)
    bare = served.root / "acme" / "app.git"
    newer = commit(bare, "NEW.md", "new\n", parent=git("rev-parse", "main", cwd=bare))
    git("update-ref", "refs/heads/main", newer, cwd=bare)
    seen = len(served.requests)

    second = manager.prepare(2, REPO, clone_url(served), "forgecrew/run-2", credential=credential)

    assert second.base_sha == newer and (second.checkout / "NEW.md").read_text() == "new\n"
    fetch = served.requests[seen:]
    assert (fetch[0].auth_present, fetch[0].status) == (False, 401), "the fetch is challenged afresh"
    assert len(fetch) > 1 and all(r.auth_valid and r.status == 200 for r in fetch[1:])


def test_push_branch_over_http_with_lease(tmp_path: Path, served: FakeGitHTTP, token: str) -> None:
    github = forge(tmp_path, served, token)
    scratch = new_bare(tmp_path / "scratch.git")
    one = commit(scratch, "fix.txt", "one\n")
    two = commit(scratch, "fix.txt", "two\n", parent=one)
    three = commit(scratch, "fix.txt", "three\n", parent=two)
    bare = served.root / "acme" / "app.git"

    github.push_branch(REPO, source=scratch, commit=one, branch="forgecrew/issue-1", expected=None)
    assert git("rev-parse", "refs/heads/forgecrew/issue-1", cwd=bare) == one
    github.push_branch(REPO, source=scratch, commit=two, branch="forgecrew/issue-1", expected=one)
    assert git("rev-parse", "refs/heads/forgecrew/issue-1", cwd=bare) == two

    for stale in (one, None):  # a lease on an older sha, and "must not exist yet"
        with pytest.raises(PushRejected) as rejected:
            github.push_branch(REPO, source=scratch, commit=three, branch="forgecrew/issue-1", expected=stale)
        assert token not in str(rejected.value) and "forgecrew/issue-1" in str(rejected.value)
    assert git("rev-parse", "refs/heads/forgecrew/issue-1", cwd=bare) == two
    assert all(r.auth_valid for r in served.requests if r.status != 401)
    assert all("/api/" not in r.path for r in served.requests)


def test_large_push_sends_a_chunked_body(tmp_path: Path, served: FakeGitHTTP, token: str) -> None:
    scratch = new_bare(tmp_path / "scratch.git")
    big = commit(scratch, "big.txt", os.urandom(1_500_000).hex())  # packs beyond git's 1 MiB http.postBuffer

    forge(tmp_path, served, token).push_branch(REPO, source=scratch, commit=big, branch="big", expected=None)

    assert git("rev-parse", "refs/heads/big", cwd=served.root / "acme" / "app.git") == big
    assert any(r.chunked and r.auth_valid and r.path.endswith("/git-receive-pack") for r in served.requests)


def test_token_is_in_no_process_argv_environment_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         token: str) -> None:
    bare = new_bare(tmp_path / "served" / "acme" / "app.git")
    git("update-ref", "refs/heads/main", commit(bare, "README.md", "hello\n"), cwd=bare)
    log = tmp_path / "git-calls.log"
    wrapper = tmp_path / "bin" / "git"
    wrapper.parent.mkdir()
    wrapper.write_text("#!/bin/sh\n"
                       f'{{ echo "--- argv"; printf "%s\\n" "$@"; echo "--- env"; env; }} >> {shlex.quote(str(log))}\n'
                       f'exec {shlex.quote(REAL_GIT)} "$@"\n')
    wrapper.chmod(0o755)
    found: list[str] = []
    during: list[GitRequest] = []

    def scan(request: GitRequest) -> None:  # runs while the client's git processes wait for the answer
        during.append(request)
        found.extend(leaks(token))

    with FakeGitHTTP(tmp_path / "served", on_request=scan) as server:  # resolves the real git before PATH changes
        server.add_token(token)
        monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}")
        github = forge(tmp_path, server, token)
        credential = github.git_credential(REPO)
        assert credential is not None and credential.url == server.url
        workspace = WorkspaceManager(tmp_path / "ws").prepare(1, REPO, github.clone_url(REPO), "forgecrew/issue-1",
                                                              credential=credential)
        scratch = new_bare(tmp_path / "scratch.git")
        git("fetch", "--quiet", str(workspace.mirror), "main", cwd=scratch)  # the parent's objects
        fix = commit(scratch, "fix.txt", "fixed\n", parent=workspace.base_sha)
        github.push_branch(REPO, source=scratch, commit=fix, branch="forgecrew/issue-1", expected=None)

    assert git("rev-parse", "refs/heads/forgecrew/issue-1", cwd=bare) == fix
    calls = log.read_text()
    assert calls.count("--- argv") >= 3 and "\nclone\n" in calls and "\npush\n" in calls, calls
    assert "credential.helper=" in calls and "/proc/self/fd/" in calls, "git got the helper, not the token"
    assert token not in calls
    assert any(r.auth_valid and "git-upload-pack" in r.path for r in during)
    assert any(r.auth_valid and "git-receive-pack" in r.path for r in during)
    assert found == [], f"token visible in /proc: {found}"
    assert files_holding(token, tmp_path / "ws", tmp_path / "served", tmp_path) == []
