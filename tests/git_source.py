"""A bare repository on disk playing the forge, for workspace and publishing tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

IDENTITY = {"GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.com",
            "GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "dev@example.com"}
FAKE_TOKEN = "ghs_FAKEtoken0123456789abcdef"
CREDENTIAL_ENV = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
                  "GIT_CONFIG_VALUE_0": f"Authorization: Bearer {FAKE_TOKEN}"}


def git(*args: str, cwd: Path) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **IDENTITY},
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


class Source:
    """A bare repository playing the forge, plus a clone to add commits to it."""

    def __init__(self, base: Path) -> None:
        self.bare = base / "forge" / "acme" / "app.git"
        self.work = base / "source-work"
        self.url = self.bare.as_uri()
        self.bare.parent.mkdir(parents=True)
        git("init", "--quiet", "--bare", "--initial-branch=main", str(self.bare), cwd=base)
        git("clone", "--quiet", str(self.bare), str(self.work), cwd=base)
        self.commit("README.md", "hello\n")

    def commit(self, name: str, text: str, branch: str = "main") -> str:
        git("checkout", "--quiet", "-B", branch, cwd=self.work)
        (self.work / name).write_text(text)
        git("add", name, cwd=self.work)
        git("commit", "--quiet", "-m", f"add {name}", cwd=self.work)
        git("push", "--quiet", "--force", "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def rev(self, ref: str) -> str:
        return git("rev-parse", ref, cwd=self.bare)
