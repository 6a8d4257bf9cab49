"""Two tasks of one repository changing the same files: say so on the later PR, or make the later one wait.

At publish, before anything is pushed, the worker records the files its branch changes
(tasks.changed_files) and looks for other tasks of the repository with a pull request still in
play (pr_open, or running a follow-up on it) whose recorded files intersect. By default the later
PR's body lists them ("Overlaps with #12 (calc.py)"). With `serialize_overlapping: true` in the
repository's .forgecrew.yml the later task pushes nothing: it waits (wait_reason starts with
WAIT_PREFIX) and coordinator/overlap.py keeps it waiting while that PR is in play; then it runs
again, afresh, from the default branch as it is after the merge.

Tasks without a PR are not compared: their recorded files may be a discarded run's. Two tasks
that publish in the same instant may both miss each other; the next publish of either sees it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.errors import ForgecrewError
from common.models import Task
from common.states import TaskState

WAIT_PREFIX = "overlaps task "
# states in which a task's PR is still open, or about to change: a follow-up runs on it
IN_PLAY = (TaskState.PR_OPEN.value, TaskState.RUNNING.value, TaskState.TESTING.value, TaskState.QUEUED.value)
MAX_NAMED = 5  # files named per overlap in a PR body or a reason


@dataclass(frozen=True)
class Overlap:
    task_id: int
    pr_number: int
    pr_url: str
    files: tuple[str, ...]

    def wait_reason(self) -> str:
        """Why a serialized task waits; coordinator/overlap.py recognises WAIT_PREFIX."""
        return (f"{WAIT_PREFIX}{self.task_id}'s PR #{self.pr_number} ({_named(self.files)}); starts again once it "
                "merges or closes")

    def pr_line(self) -> str:
        return f"- Overlaps with #{self.pr_number} ({_named(self.files)}): {self.pr_url}"


class OverlapSerialized(ForgecrewError):
    """The repository serializes overlapping tasks and this one overlaps an open PR: nothing was pushed."""

    def __init__(self, overlap: Overlap) -> None:
        self.overlap = overlap
        super().__init__(overlap.wait_reason())


def _named(files: Sequence[str]) -> str:
    shown = ", ".join(files[:MAX_NAMED])
    return shown + (f" and {len(files) - MAX_NAMED} more" if len(files) > MAX_NAMED else "")


def files_of(task: Task) -> list[str]:
    """tasks.changed_files as a list; a value that is not a JSON list of strings counts as none."""
    try:
        value = json.loads(task.changed_files or "[]")
    except ValueError:
        return []
    return [path for path in value if isinstance(path, str)] if isinstance(value, list) else []


def find_overlaps(session: Session, *, task_id: int, repo: str, files: Iterable[str]) -> list[Overlap]:
    """Other tasks of `repo` with a PR in play whose recorded files intersect `files`, oldest first."""
    mine = set(files)
    if not mine:
        return []
    others = session.scalars(select(Task).where(
        func.lower(Task.repo) == repo.lower(), Task.id != task_id, Task.pr_number.is_not(None),
        Task.changed_files.is_not(None), Task.state.in_(IN_PLAY)).order_by(Task.id)).all()
    found = []
    for other in others:
        shared = sorted(mine.intersection(files_of(other)))
        if shared:
            found.append(Overlap(other.id, other.pr_number or 0, other.pr_url or "", tuple(shared)))
    return found


def record_and_find(session: Session, task: Task, files: Sequence[str]) -> list[Overlap]:
    """Record `task`'s changed files (in the caller's transaction) and return the overlaps they make."""
    task.changed_files = json.dumps(sorted(files))
    return find_overlaps(session, task_id=task.id, repo=task.repo, files=files)


def pr_section(overlaps: Sequence[Overlap]) -> list[str]:
    """The PR body's lines about overlapping PRs (none: no lines)."""
    if not overlaps:
        return []
    return ["## Overlapping pull requests",
            "Other forgecrew pull requests change the same files; merge one, then update the other:",
            *(overlap.pr_line() for overlap in overlaps), ""]
