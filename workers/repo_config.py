"""`.forgecrew.yml` in the target repository: its test and setup commands and instructions."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.errors import ForgecrewError

CONFIG_NAME = ".forgecrew.yml"
INSTRUCTION_FILES = ("AGENTS.md", "CLAUDE.md")


class RepoConfigError(ForgecrewError):
    """The repository's .forgecrew.yml cannot be used; the message says which key is wrong."""


class RepoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    test_command: str | None = Field(None, description="Shell command that runs the tests.")
    setup_command: str | None = Field(None, description="Run once before the agent starts.")
    instructions: str = Field("", description="Extra instructions for the agent.")
    specialty: str | None = Field(None, description="Overrides triage for this repository.")
    test_timeout: int = Field(900, gt=0, description="Seconds before the test run is killed.")


def load_repo_config(checkout: Path) -> RepoConfig:
    """The repo's settings; a missing file means defaults, a broken one is a clear error."""
    path = checkout / CONFIG_NAME
    if not path.is_file():
        return RepoConfig()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise RepoConfigError(f"{CONFIG_NAME} must be a mapping of keys to values")
        return RepoConfig.model_validate(data)
    except yaml.YAMLError as exc:
        raise RepoConfigError(f"{CONFIG_NAME} is not valid YAML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise RepoConfigError(f"{CONFIG_NAME}: {problems}") from None


def instruction_files(checkout: Path, limit: int = 20_000) -> dict[str, str]:
    """AGENTS.md / CLAUDE.md contents, trimmed, keyed by file name."""
    found = {}
    for name in INSTRUCTION_FILES:
        path = checkout / name
        if path.is_file() and not path.is_symlink():
            found[name] = path.read_text(encoding="utf-8", errors="replace")[:limit]
    return found
