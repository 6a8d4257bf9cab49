"""Overlapping tasks: the `.forgecrew.yml` switch, which other PRs count, the PR body's note and the hold check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from common.db import Database
from common.models import Task
from common.settings import Settings
from common.states import TaskState
from common.transitions import transition
from coordinator import overlap as coordinator_overlap
from tests.factories import make_task
from workers import overlap
from workers.llm import Usage
from workers.publish import PublishRequest, pr_body
from workers.repo_config import RepoConfigError, load_repo_config

REPO = "acme/calc"


@pytest.mark.parametrize(("text", "expected"), [("", False), ("serialize_overlapping: true\n", True),
                                                ("serialize_overlapping: false\n", False)])
def test_the_switch_is_read_from_the_repository(tmp_path: Path, text: str, expected: bool) -> None:
    (tmp_path / ".forgecrew.yml").write_text(text)
    assert load_repo_config(tmp_path).serialize_overlapping is expected


@pytest.mark.parametrize(("text", "message"), [
    ("serialize_overlapping: sometimes\n", "serialize_overlapping: Input should be a valid boolean"),
    ("serialize_overlaping: true\n", "serialize_overlaping: Extra inputs are not permitted"),
])
def test_a_wrong_switch_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / ".forgecrew.yml").write_text(text)
    with pytest.raises(RepoConfigError, match=message):
        load_repo_config(tmp_path)


def test_the_later_pr_body_links_the_other_pr() -> None:
    found = overlap.Overlap(7, 12, "https://github.com/acme/calc/pull/12", ("calc.py",))
    request = PublishRequest(REPO, 3, "t", "did it", None, Usage(), None, "m")
    body = pr_body(request, ["calc.py"], overlap.pr_section([found]))
    assert "- Overlaps with #12 (calc.py): https://github.com/acme/calc/pull/12" in body
    assert body.index("## Overlapping pull requests") < body.index("## Tests")
    assert "Overlapping" not in pr_body(request, ["calc.py"], overlap.pr_section([]))
    many = overlap.Overlap(7, 12, "u", tuple(f"f{n}.py" for n in range(8)))
    assert many.wait_reason() == ("overlaps task 7's PR #12 (f0.py, f1.py, f2.py, f3.py, f4.py and 3 more); "
                                  "starts again once it merges or closes")


def task(db: Database, number: int, *states: TaskState, files: list[str] | None = None, pr: int | None = None,
         repo: str = REPO, **fields: Any) -> int:
    task_id = make_task(db, repo=repo, issue_number=number)
    with db.session() as session:
        row = session.get(Task, task_id)
        for state in states:
            transition(session, row, state, actor="test")
        row.changed_files = json.dumps(files) if files is not None else None
        row.pr_number, row.pr_url = pr, (f"local://{repo}/pull/{pr}" if pr else None)
        for key, value in fields.items():
            setattr(row, key, value)
    return task_id


PR_OPEN = (TaskState.QUEUED, TaskState.RUNNING, TaskState.PR_OPEN)


@pytest.mark.integration
def test_only_other_tasks_with_a_pr_in_play_count(db: Database) -> None:
    open_pr = task(db, 1, *PR_OPEN, files=["calc.py", "README.md"], pr=10)
    task(db, 2, *PR_OPEN, TaskState.DONE, files=["calc.py"], pr=11)  # merged: over
    task(db, 3, TaskState.QUEUED, TaskState.RUNNING, files=["calc.py"])  # no PR: its files may be a discarded run's
    task(db, 4, *PR_OPEN, files=["calc.py"], pr=13, repo="acme/other")
    task(db, 5, *PR_OPEN, files=["other.py"], pr=14)
    follow_up = task(db, 6, *PR_OPEN, TaskState.QUEUED, TaskState.RUNNING, files=["calc.py"], pr=15)
    mine = task(db, 7, TaskState.QUEUED, TaskState.RUNNING)
    with db.session() as session:
        found = overlap.record_and_find(session, session.get(Task, mine), ["calc.py", "new.py"])
    assert [(o.task_id, o.pr_number, o.files) for o in found] == [(open_pr, 10, ("calc.py",)),
                                                                   (follow_up, 15, ("calc.py",))]
    with db.session() as session:
        assert json.loads(session.get(Task, mine).changed_files) == ["calc.py", "new.py"]
        assert overlap.find_overlaps(session, task_id=mine, repo=REPO, files=[]) == []


@pytest.mark.integration
def test_a_serialized_task_waits_while_the_other_pr_is_open(db: Database, settings: Settings) -> None:
    other = task(db, 1, *PR_OPEN, files=["calc.py"], pr=10)
    reason = f"overlaps task {other}'s PR #10 (calc.py); starts again once it merges or closes"
    held = task(db, 2, TaskState.QUEUED, TaskState.RUNNING, TaskState.WAITING, files=["calc.py"], wait_reason=reason)
    limited = task(db, 3, TaskState.WAITING, files=["calc.py"], wait_reason="repository limit of 1 reached")
    with db.session() as session:
        assert coordinator_overlap.hold_reason(session, session.get(Task, held), settings) == reason
        assert coordinator_overlap.hold_reason(session, session.get(Task, limited), settings) is None  # not ours
        transition(session, session.get(Task, other), TaskState.CANCELLED, actor="test")  # its PR closed unmerged
    with db.session() as session:
        assert coordinator_overlap.hold_reason(session, session.get(Task, held), settings) is None


def test_recorded_files_that_are_not_a_list_count_as_none() -> None:
    for value in (None, "", "{", '{"a": 1}', '"calc.py"', '[1, "calc.py"]'):
        files = overlap.files_of(Task(changed_files=value))
        assert files in ([], ["calc.py"]) and (files == ["calc.py"]) == (value == '[1, "calc.py"]')


@pytest.mark.integration
def test_the_sweep_finds_the_awaited_pr_merged_on_the_local_forge(db: Database, settings: Settings,
                                                                   tmp_path: Path) -> None:
    """No webhook comes from the local forge: the serialized task is released once git shows the merge."""
    import subprocess

    from common.forge.local import LocalForge
    from tests.sample_repo import write_sample

    forge = LocalForge(settings)
    bare = forge.create_repo(REPO, write_sample(tmp_path / "sample"))
    git = ["git", "--git-dir", str(bare)]
    main = subprocess.run([*git, "rev-parse", "main"], capture_output=True, text=True, check=True).stdout.strip()
    change = subprocess.run([*git, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit-tree",
                             f"{main}^{{tree}}", "-p", main, "-m", "change"], capture_output=True, text=True,
                            check=True).stdout.strip()
    subprocess.run([*git, "update-ref", "refs/heads/topic", change], check=True)
    pr = forge.open_or_update_pr(REPO, branch="topic", base="main", title="t", body="b", draft=False)
    other = task(db, 1, *PR_OPEN, files=["calc.py"], pr=pr.number)
    held = task(db, 2, TaskState.WAITING, files=["calc.py"],
                wait_reason=f"overlaps task {other}'s PR #{pr.number} (calc.py); starts again once it merges or closes")
    released: list[str] = []
    now = [0.0]
    checks = coordinator_overlap.OverlapChecks(db, lambda _id: forge, lambda repo: released.append(repo),
                                               clock=lambda: now[0])
    assert checks.sweep() == [] and released == []  # still open
    subprocess.run([*git, "update-ref", "refs/heads/main", change], check=True)  # merged by hand
    assert checks.sweep() == []  # asked a moment ago: not again within the interval
    now[0] += settings.dependency_check_seconds
    assert checks.sweep() == [other] and released == [REPO]
    with db.session() as session:
        assert session.get(Task, other).state == "done"
        assert coordinator_overlap.hold_reason(session, session.get(Task, held), settings) is None
