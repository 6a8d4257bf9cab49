"""Fixtures and helpers for tests that run the worker pipeline in process on the local forge."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from common.db import Database
from common.forge.base import Forge
from common.forge.local import LocalForge
from common.leases import claim
from common.models import Task
from common.settings import Settings
from tests.fakes.anthropic_server import DEFAULT_KEY, FakeAnthropic
from tests.sample_repo import ISSUE_BODY, ISSUE_TITLE, write_sample
from workers.llm import LLMClient
from workers.pipeline import Outcome, Pipeline

REPO = "acme/calc"
GITHUB_TOKEN = "ghp_supersecrettokenvalue1234567890abcd"


@pytest.fixture
def model() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def forge_settings(make_settings: Callable[..., Settings], model: FakeAnthropic, tmp_path: Path) -> Settings:
    return make_settings(forge="local", anthropic_api_key=DEFAULT_KEY, anthropic_base_url=model.base_url,
                         github_token=GITHUB_TOKEN, model="claude-sonnet-4-6", repair_rounds=1, max_turns=12)


@pytest.fixture
def forge(forge_settings: Settings, tmp_path: Path) -> LocalForge:
    local = LocalForge(forge_settings)
    local.create_repo(REPO, write_sample(tmp_path / "sample"))
    local.create_issue(REPO, 1, ISSUE_TITLE, ISSUE_BODY)
    return local


def run_task(settings: Settings, db: Database, forge: Forge, task_id: int,
             progress: Callable[[str], None] | None = None) -> Outcome:
    """Claim the task and run the whole pipeline on it, as a worker would."""
    held = claim(db, task_id, "test-worker")
    assert held is not None

    def llm() -> LLMClient:
        return LLMClient.from_settings(settings, retry_base_delay=0.01, max_retries=1)

    extra = {"progress": progress} if progress else {}
    return Pipeline(settings, db, lambda: forge, llm_factory=llm, **extra).run(held)


def load(db: Database, task_id: int) -> Task:
    with db.session() as session:
        task = session.get(Task, task_id)
        task.events, task.runs  # noqa: B018  (load before the session closes)
        return task


def pushed_file(forge: LocalForge, branch: str, path: str, repo: str = REPO) -> str:
    return subprocess.run(["git", "--git-dir", str(forge.bare_path(repo)), "show", f"{branch}:{path}"],
                          capture_output=True, text=True, check=True).stdout


def github_cluster_settings(make_settings: Callable[..., Settings], github_api_url: str, model: FakeAnthropic,
                            tmp_path: Path, *, repo: str, token: str, **overrides: object) -> Settings:
    """Settings of a cluster against the fake GitHub, whose repository `repo` is cloned from tmp_path/git.

    The sample repository is written there first; follow-ups and retries are quick (a reaper each
    second, progress edits unthrottled) unless `overrides` say otherwise.
    """
    git_root = tmp_path / "git"
    LocalForge(make_settings(local_forge_root=git_root)).create_repo(repo, write_sample(tmp_path / "sample"))
    quick: dict[str, object] = {"reaper_interval_seconds": 1, "progress_edit_interval_seconds": 0}
    return make_settings(
        forge="github", github_token=token, github_api_url=github_api_url,
        clone_url_template=f"file://{git_root}/{{full_name}}.git", github_write_interval_seconds=0,
        anthropic_api_key=DEFAULT_KEY, anthropic_base_url=model.base_url, **{**quick, **overrides})
