"""`.forgecrew.yml` in the target repository: its test and setup commands, instructions and scheduling."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.errors import ForgecrewError
from workers.repo_files import RepoFileRefused, read_text

log = logging.getLogger(__name__)
CONFIG_NAME = ".forgecrew.yml"
CONFIG_LIMIT = 64 * 1024
INSTRUCTION_FILES = ("AGENTS.md", "CLAUDE.md")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")
# A config is a few flat keys. Deeper nesting is a bomb: PyYAML's composer recurses per level and its
# scanner slows quadratically with flow depth (60,000 `[` take minutes); aliases past a few are too.
MAX_DEPTH = 20
MAX_ALIASES = 100
MAX_PROBLEMS = 5  # validation errors quoted in the message; the rest are counted


class RepoConfigError(ForgecrewError):
    """The repository's .forgecrew.yml cannot be used; the message says which key is wrong."""


class RepoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    test_command: str | None = Field(None, description="Shell command that runs the tests.")
    setup_command: str | None = Field(None, description="Run once before the agent starts.")
    instructions: str = Field("", description="Extra instructions for the agent.")
    specialty: str | None = Field(None, description="Overrides triage for this repository.")
    test_timeout: int = Field(900, gt=0, description="Seconds before the test run is killed.")
    setup_network: bool = Field(False, description="Ask for user-mode network during setup_command (to install "
                                "dependencies); it never reaches the worker's host or private networks.")
    plan_first: bool = Field(False, description="Post a plan on the issue first and change nothing until a person "
                             "with write access answers `/forgecrew approve` (as the `forgecrew:plan` label asks).")
    serialize_overlapping: bool = Field(False, description="When this task changes files that another forgecrew "
                                        "pull request of the repository still open changes too, push nothing and "
                                        "wait until that PR merges or closes, then start again from the updated "
                                        "default branch (default: open the PR and link the other one).")


def load_repo_config(checkout: Path) -> RepoConfig:
    """The repo's settings; a missing file means defaults, a broken one a clear error that quotes none of it."""
    try:
        text = read_text(checkout, CONFIG_NAME, limit=CONFIG_LIMIT)
    except RepoFileRefused as exc:
        raise RepoConfigError(str(exc)) from None
    if text is None:
        return RepoConfig()
    data = _parse(text) or {}
    if not isinstance(data, dict):
        raise RepoConfigError(f"{CONFIG_NAME} must be a mapping of keys to values")
    try:
        return RepoConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        problems = "; ".join(f"{_location(e['loc'])}: {e['msg']}" for e in errors[:MAX_PROBLEMS])
        more = f"; and {len(errors) - MAX_PROBLEMS} more" if len(errors) > MAX_PROBLEMS else ""
        raise RepoConfigError(f"{CONFIG_NAME}: {problems}{more}") from None


def _parse(text: str) -> object:
    """yaml.safe_load behind the depth and alias limits; every way PyYAML fails becomes a RepoConfigError."""
    try:
        _check_structure(text)
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RepoConfigError(f"{CONFIG_NAME} is not valid YAML{_where(exc)}") from None
    except (ValueError, OverflowError):  # PyYAML's constructors: 2001-13-45, `!!int x`, a 5,000-digit number
        raise RepoConfigError(f"{CONFIG_NAME} has a value YAML cannot construct (an impossible date, a malformed "
                              "!!int or !!float, or a number of more than 4,300 digits)") from None
    except RecursionError:  # not expected past _check_structure; kept so no input can crash the worker
        raise RepoConfigError(f"{CONFIG_NAME} is nested too deeply") from None


def _check_structure(text: str) -> None:
    """Refuse nesting past MAX_DEPTH and aliases past MAX_ALIASES, reading YAML's events (not recursive)."""
    depth = aliases = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise RepoConfigError(f"{CONFIG_NAME} nests more than {MAX_DEPTH} levels deep{_at(event)}")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise RepoConfigError(f"{CONFIG_NAME} uses more than {MAX_ALIASES} aliases (*name){_at(event)}")


def _at(event: yaml.Event) -> str:
    mark = event.start_mark
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _where(exc: yaml.YAMLError) -> str:
    """Line and column of a YAML error, and what was wrong in general terms (no quoted content)."""
    mark = getattr(exc, "problem_mark", None)
    problem = re.sub(r"(['\"]).*?\1", "…", str(getattr(exc, "problem", "") or ""))
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return where + (f": {problem}" if problem else "")


def _location(loc: tuple[object, ...]) -> str:
    """A key path for an error message; a key that is not a plain name is not repeated."""
    return ".".join(str(part) if isinstance(part, int) or _KEY.match(str(part)) else "<key>" for part in loc)


def instruction_files(checkout: Path, limit: int = 20_000) -> dict[str, str]:
    """AGENTS.md / CLAUDE.md contents, trimmed, keyed by file name; a link or odd file is skipped."""
    found = {}
    for name in INSTRUCTION_FILES:
        try:
            text = read_text(checkout, name, limit=limit, truncate=True)
        except RepoFileRefused as exc:
            log.info("not reading %s: %s", name, exc)
            continue
        if text is not None:
            found[name] = text
    return found
