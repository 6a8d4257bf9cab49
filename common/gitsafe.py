"""Git as the worker runs it: minimal environment, no hooks, credentials only through a file descriptor.

The agent's commands run in a sandbox that sees only the task's checkout, so the repositories
the worker's own git reads (the host's mirrors, its private publishing repository, the local
forge) are out of their reach. Every git command the worker runs still

- gets a minimal environment, never the worker's own (that one holds the cluster's secrets);
- reads no system or global config and runs no hook or fsmonitor, whatever config says;
- gets a forge credential, when it talks to the forge, through a credential helper that reads
  it from an inherited memfd: never an environment variable or an argument, which any process
  of the same user could read from /proc while git runs.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class GitCredential:
    """What git needs to talk to a forge over HTTP(S): for `url` (scheme://host) only."""

    url: str
    username: str
    password: str = field(repr=False)


@contextmanager
def credential_helper(credential: GitCredential | None) -> Iterator[tuple[list[str], tuple[int, ...]]]:
    """`-c` arguments that make git ask a helper, and the memfd (to pass to git) the helper reads.

    The helper runs `cat /proc/self/fd/N`, which opens the memfd afresh (offset 0) each time
    git asks, so a fetch or push that asks twice still gets it. Only `get` is answered; any
    other helper is switched off, so nothing stores the credential anywhere.
    """
    if credential is None:
        yield [], ()
        return
    fd = os.memfd_create("forgecrew-git-credential", os.MFD_CLOEXEC)
    try:
        os.write(fd, f"username={credential.username}\npassword={credential.password}\n".encode())
        helper = f'!f() {{ test "$1" = get && cat /proc/self/fd/{fd}; }}; f'
        yield ["-c", "credential.helper=", "-c", f"credential.{credential.url}.helper={helper}",
               "-c", "credential.interactive=false"], (fd,)
    finally:
        os.close(fd)


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
            timeout: float | None = None, credential: GitCredential | None = None
            ) -> subprocess.CompletedProcess[str]:
    """Run `git args` hardened; `env` adds to the minimal environment (identity, GIT_DIR), never a secret."""
    with credential_helper(credential) as (config, fds):
        return subprocess.run(["git", *HARDENING, *config, *args], cwd=cwd, env={**base_env(), **(env or {})},
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout,
                              pass_fds=fds)


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
