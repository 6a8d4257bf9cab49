"""Dependencies and overlapping work end to end: real coordinator and worker processes, PostgreSQL, Redis,
Celery and a scripted model; the fake GitHub for dependencies, the local forge for overlaps.

A task whose issue says "depends on #1" waits until #1's PR merges (the pull_request.closed webhook), then
runs from the default branch with #1's change in it; a cycle is refused with a comment. Two tasks changing
calc.py: the later PR links the earlier; with `serialize_overlapping: true` the later pushes nothing and
waits until the earlier PR merges, then runs afresh from the new default branch.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.db import Database
from common.forge.local import LocalForge
from common.models import Task
from common.settings import Settings
from tests.conftest import settings_env
from tests.fakes.anthropic_server import DEFAULT_KEY, FakeAnthropic, tool_use
from tests.fakes.github_server import FakeGitHub
from tests.sample_repo import FILES, ISSUE_BODY, ISSUE_TITLE, fixing_script, last_tool_result, write_sample
from tests.support import Process, deliver, labeled_issue, payload, start_coordinator, start_worker, wait_for

pytestmark = pytest.mark.integration
REPO = "Codertocat/Hello-World"
TOKEN = "ghp_e2eDependencyTokenForTheFakeGitHub01"
FIXED = "return a + b"


def task_in(db: Database, task_id: int, *states: str, processes: list[Process], timeout: float = 40) -> Task:
    def reached() -> Task | None:
        with db.session() as session:
            task = session.get(Task, task_id)
            assert task is not None and (task.state != "failed" or "failed" in states), (
                task and task.failure_reason, processes[-1].log()[-3000:])
            return task if task.state in states else None

    return wait_for(reached, timeout=timeout, interval=0.3, what=f"task {task_id} in {states}")


def merge(bare: Path, branch: str, default: str = "main") -> str:
    """Fast-forward the default branch to the PR's branch in the bare repository, as a merge button would."""
    sha = subprocess.run(["git", "--git-dir", str(bare), "rev-parse", f"refs/heads/{branch}"], capture_output=True,
                         text=True, check=True).stdout.strip()
    subprocess.run(["git", "--git-dir", str(bare), "update-ref", f"refs/heads/{default}", sha], check=True)
    return sha


def merged_webhook(repo: str, task: Task) -> dict[str, Any]:
    data = copy.deepcopy(payload("pull_request", "closed"))
    data["number"] = data["pull_request"]["number"] = task.pr_number
    data["pull_request"]["merged"] = True
    data["pull_request"]["head"]["ref"] = task.branch
    data["pull_request"]["head"]["repo"]["full_name"] = repo
    data["repository"]["full_name"] = repo
    return data


def issue(repo: str, number: int, body: str) -> dict[str, Any]:
    data = labeled_issue("forgecrew:backend", repo=repo, number=number, title=f"{ISSUE_TITLE} ({number})", body=body)
    data["repository"]["full_name"] = repo
    return data


def reads_fixed_then_edits_readme(seen: list[str]) -> list[Any]:
    """A dependent's run: calc.py must already hold the blocker's fix; it changes README.md only."""

    def after_reading(request: Any) -> Any:
        seen.append(last_tool_result(request))
        return tool_use("edit_file", {"path": "README.md", "old_text": "A very small", "new_text": "A small"})

    return [tool_use("read_file", {"path": "calc.py"}), after_reading,
            tool_use("finish", {"summary": "Reworded the README."})]


def base_of(settings: Settings, task_id: int) -> str:
    meta = json.loads((settings.workspace_root / "tasks" / str(task_id) / "metadata.json").read_text())
    return meta["base_sha"]


def test_a_dependency_waits_for_its_blockers_merge_and_a_cycle_is_refused_on_github(
        make_settings: Callable[..., Settings], db: Database, model: FakeAnthropic, tmp_path: Path,
        processes: list[Process]) -> None:
    git_root = tmp_path / "git"
    LocalForge(make_settings(local_forge_root=git_root)).create_repo(REPO, write_sample(tmp_path / "sample"))
    with FakeGitHub() as github:
        github.add_token(TOKEN)
        github.add_repo(REPO)
        for number in (1, 2, 3, 4):
            github.add_issue(REPO, number, f"{ISSUE_TITLE} ({number})", ISSUE_BODY, labels=("forgecrew:backend",))
        settings: Settings = make_settings(
            forge="github", github_token=TOKEN, github_api_url=github.api_url,
            clone_url_template=f"file://{git_root}/{{full_name}}.git", github_write_interval_seconds=0,
            anthropic_api_key=DEFAULT_KEY, anthropic_base_url=model.base_url, reaper_interval_seconds=0.5,
            progress_edit_interval_seconds=0, worker_concurrency=1)
        env = settings_env(settings)
        coordinator, url = start_coordinator(env, tmp_path)
        processes += [coordinator, start_worker(env, tmp_path, "backend")]

        held = deliver(url, "issues", issue(REPO, 2, "Reword the README.\n\nDepends on #1"))
        dependent = held["task_id"]
        assert held["status"].endswith("blocked by #1 (open, no forgecrew task yet)"), held
        model.add(*fixing_script())
        blocker = deliver(url, "issues", issue(REPO, 1, ISSUE_BODY))["task_id"]
        opened = task_in(db, blocker, "pr_open", processes=processes)
        reason = "blocked by #1 (its forgecrew PR is not merged yet)"  # the scheduler's next round says so
        wait_for(lambda: task_in(db, dependent, "waiting", processes=processes).wait_reason == reason, timeout=10,
                 what="the dependent's reason to follow its blocker")
        assert any("blocked by #1" in comment["body"] for comment in github.issue(REPO, 2).comments)
        assert len(model.message_requests) == 4  # the blocker's run only: the dependent never reached a worker

        seen: list[str] = []
        model.add(*reads_fixed_then_edits_readme(seen))
        merged_sha = merge(git_root / f"{REPO}.git", opened.branch or "")
        answer = deliver(url, "pull_request", merged_webhook(REPO, opened))
        assert answer["status"] == (f"task {blocker} done: pull request #{opened.pr_number} merged by Codertocat; "
                                    f"unblocked task(s) {dependent}")
        done = task_in(db, dependent, "pr_open", processes=processes)
        assert seen and FIXED in seen[0]  # the blocker's change was in the dependent's checkout
        assert base_of(settings, dependent) == merged_sha  # started from the default branch after the merge
        pulls = {pr.number: pr for pr in github.pulls(REPO)}
        assert pulls[done.pr_number].head == done.branch and "Overlaps with" not in pulls[done.pr_number].body

        first = deliver(url, "issues", issue(REPO, 3, "blocked by #4"))["task_id"]
        refused = deliver(url, "issues", issue(REPO, 4, "- depends on #3"))
        assert refused["status"].endswith("refused: its dependencies form a cycle #4 → #3 → #4"), refused
        task_in(db, refused["task_id"], "failed", processes=processes)
        assert task_in(db, first, "waiting", processes=processes)

        def cycle_comment() -> list[str]:
            return [c["body"] for c in github.issue(REPO, 4).comments if "cycle" in c["body"]]

        [comment] = wait_for(cycle_comment, timeout=15, what="the cycle's comment on issue 4")
        assert "#4 → #3 → #4" in comment
        assert github.violations == []


def serial_config() -> str:
    return FILES[".forgecrew.yml"] + "serialize_overlapping: true\n"


def test_overlapping_tasks_are_noted_or_serialized_on_the_local_forge(
        make_settings: Callable[..., Settings], db: Database, model: FakeAnthropic, tmp_path: Path,
        processes: list[Process]) -> None:
    settings: Settings = make_settings(forge="local", anthropic_api_key=DEFAULT_KEY, anthropic_base_url=model.base_url,
                                       reaper_interval_seconds=0.5, progress_edit_interval_seconds=0,
                                       worker_concurrency=1, lease_seconds=30)
    forge = LocalForge(settings)
    noted, serial = "acme/noted", "acme/serial"
    forge.create_repo(noted, write_sample(tmp_path / "noted"))
    serial_dir = write_sample(tmp_path / "serial")
    (serial_dir / ".forgecrew.yml").write_text(serial_config())
    forge.create_repo(serial, serial_dir)
    for repo in (noted, serial):
        for number in (1, 2):
            forge.create_issue(repo, number, f"{ISSUE_TITLE} ({number})", ISSUE_BODY)
    env = settings_env(settings)
    coordinator, url = start_coordinator(env, tmp_path)
    processes += [coordinator, start_worker(env, tmp_path, "backend")]

    # without serialize_overlapping: both PRs open, the later one links the earlier
    model.add(*fixing_script(), *fixing_script("return b + a"))
    earlier = task_in(db, deliver(url, "issues", issue(noted, 1, ISSUE_BODY))["task_id"], "pr_open",
                      processes=processes)
    later = task_in(db, deliver(url, "issues", issue(noted, 2, ISSUE_BODY))["task_id"], "pr_open",
                    processes=processes)
    bodies = {pull["number"]: pull["body"] for pull in forge.pull_requests(noted)}
    assert f"Overlaps with #{earlier.pr_number} (calc.py): {earlier.pr_url}" in bodies[later.pr_number]
    assert "Overlaps with" not in bodies[earlier.pr_number]
    assert json.loads(later.changed_files or "") == ["calc.py"]

    # with it: the later one pushes nothing and waits for the earlier PR, then runs again from the new main
    model.add(*fixing_script(), *fixing_script("return b + a"))
    first = task_in(db, deliver(url, "issues", issue(serial, 1, ISSUE_BODY))["task_id"], "pr_open",
                    processes=processes)
    second_id = deliver(url, "issues", issue(serial, 2, ISSUE_BODY))["task_id"]
    second = task_in(db, second_id, "waiting", processes=processes)
    assert second.wait_reason == (f"overlaps task {first.id}'s PR #{first.pr_number} (calc.py); starts again "
                                  "once it merges or closes")
    assert [pull["number"] for pull in forge.pull_requests(serial)] == [first.pr_number]  # nothing pushed
    assert second.attempt == 0  # its fresh run after the wait is not counted as a retry of a lost worker
    assert not forge._has_branch(serial, second.branch or "")

    seen: list[str] = []
    model.add(*reads_fixed_then_edits_readme(seen))
    merged_sha = merge(forge.bare_path(serial), first.branch or "")
    deliver(url, "pull_request", merged_webhook(serial, first))
    again = task_in(db, second_id, "pr_open", processes=processes)
    assert seen and FIXED in seen[0]  # the fresh run saw the merged change, not its own discarded one
    assert base_of(settings, second_id) == merged_sha
    parent = subprocess.run(["git", "--git-dir", str(forge.bare_path(serial)), "rev-parse", f"{again.branch}^"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert parent == merged_sha  # the PR's commit sits on the merged default branch
    [body] = [pull["body"] for pull in forge.pull_requests(serial) if pull["number"] == again.pr_number]
    assert "Overlaps with" not in body and json.loads(again.changed_files or "") == ["README.md"]
