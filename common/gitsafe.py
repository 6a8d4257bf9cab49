"""Git as the worker runs it: shielded from files the agent's commands may have written.

The agent's shell runs as the worker's user, so it can write a checkout's .git/config and
hooks, the host's mirrors, ~/.gitconfig and the local forge's bare repositories. Every git
command the worker runs itself therefore

- gets a minimal environment, never the worker's own (that one holds the cluster's secrets);
  credentials are added by the caller, and only for commands that talk to the forge;
- reads no system or global config and runs no hook or fsmonitor, whatever config says;
- works on a repository whose config the worker has just written itself (`write_config`),
  so a filter driver, proxy, pager or alias the agent planted is gone before git reads it.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from common.errors import ForgecrewError

# Command-line config outranks every file, and git hands it to the git processes it starts
# (a local push's receive-pack included) through GIT_CONFIG_PARAMETERS.
HARDENING = (
    "-c", "core.hooksPath=/dev/null",
    "-c", "core.fsmonitor=false",
    "-c", "protocol.ext.allow=never",
    "-c", "commit.gpgSign=false",
)
# What the operator may have set for git itself (an SSH agent, a proxy): no secrets of ours.
PASSED_THROUGH = ("PATH", "HOME", "SSH_AUTH_SOCK", "GIT_SSH_COMMAND", "HTTPS_PROXY", "https_proxy",
                  "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR",
                  "GIT_SSL_CAINFO")


class UnsafeRepository(ForgecrewError):
    """A repository's .git is not the directory the worker made; git must not run in it."""


def base_env() -> dict[str, str]:
    """The environment of the worker's git commands before any credential is added."""
    env = {key: os.environ[key] for key in PASSED_THROUGH if key in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update({
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_ATTR_NOSYSTEM": "1",
        "XDG_CONFIG_HOME": os.devnull,  # no global attributes or ignore files either
        "GIT_TERMINAL_PROMPT": "0",
        "LC_ALL": "C",
    })
    return env


def run_git(args: Sequence[str], cwd: Path | None = None, *, env: Mapping[str, str] | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run `git args` hardened; `env` adds to the minimal environment (credentials, identity)."""
    return subprocess.run(["git", *HARDENING, *args], cwd=cwd, env={**base_env(), **(env or {})},
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)


def git_dir(checkout: Path) -> Path:
    """The checkout's .git, refusing one the agent replaced by a link or a `gitdir:` file."""
    dot_git = checkout / ".git"
    if dot_git.is_symlink() or not dot_git.is_dir():
        raise UnsafeRepository(f"{dot_git} is no longer the directory forgecrew created; refusing to run git in it")
    return dot_git


def write_config(repo_dir: Path, entries: Sequence[tuple[str, str]]) -> None:
    """Replace the repository's config with exactly `entries`, atomically (a plain file write, no git)."""
    config = repo_dir / "config"
    if config.is_symlink():
        config.unlink()
    handle, partial = tempfile.mkstemp(prefix=".config-", dir=repo_dir)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(config_text(entries))
        os.replace(partial, config)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def config_text(entries: Sequence[tuple[str, str]]) -> str:
    """Git config syntax for `section[.subsection].name` keys, every value quoted."""
    sections: dict[str, list[str]] = {}
    for key, value in entries:
        section, _, name = key.rpartition(".")
        head, dot, sub = section.partition(".")
        if not head or not name or "\n" in value or '"' in sub:
            raise ForgecrewError(f"cannot write {key}={value!r} into a git config")
        header = f'[{head} "{sub}"]' if dot else f"[{head}]"
        quoted = value.replace("\\", "\\\\").replace('"', '\\"')
        sections.setdefault(header, []).append(f'\t{name} = "{quoted}"')
    return "".join(f"{header}\n" + "\n".join(lines) + "\n" for header, lines in sections.items())


def checkout_config(clone_url: str) -> list[tuple[str, str]]:
    """The config of a task checkout: a plain non-bare repository with `origin` at the forge."""
    return [("core.repositoryformatversion", "0"), ("core.filemode", "true"), ("core.bare", "false"),
            ("core.logallrefupdates", "true"), ("remote.origin.url", clone_url),
            ("remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*")]


def mirror_config(clone_url: str, extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """The config of a host mirror: bare, every branch and tag of `origin` mapped one to one."""
    return [("core.repositoryformatversion", "0"), ("core.filemode", "true"), ("core.bare", "true"),
            ("remote.origin.url", clone_url), ("remote.origin.fetch", "+refs/heads/*:refs/heads/*"),
            ("remote.origin.fetch", "+refs/tags/*:refs/tags/*"), *extra]


def restore_alternates(dot_git: Path, objects: Path) -> None:
    """Point the checkout's borrowed objects at the mirror again, whatever was written there."""
    info = dot_git / "objects" / "info"
    info.mkdir(parents=True, exist_ok=True)
    alternates = info / "alternates"
    if alternates.is_symlink():
        alternates.unlink()
    alternates.write_text(f"{objects}\n")
    for stray in ("commondir", "gitdir"):  # would turn the checkout into another repository's worktree
        path = dot_git / stray
        if path.exists() or path.is_symlink():
            path.unlink()
