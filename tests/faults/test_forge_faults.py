"""Fault 8: the forge refuses: a repository that is not there, pushes rejected (a person's commits on
the branch, a protected branch), GitHub failing while the PR is opened. One worker runs them at once."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.db import Database
from common.models import Task
from common.settings import Settings
from tests.conftest import settings_env
from tests.fakes.anthropic_server import FakeAnthropic
from tests.faults.services import install_hook
from tests.faults.support import REPO, Forge, deliver, record_fault, serve_per_issue, wait_final
from tests.sample_repo import ISSUE_BODY, fixing_script
from tests.support import Process, labeled_issue, start_coordinator, start_worker
from workers.workspace import branch_name

pytestmark = pytest.mark.integration
MISSING_REPO = "Codertocat/Gone"
MISSING = "fix the repository that was deleted"
PERSON_PUSHED = "a person pushes to the branch meanwhile"
PROTECTED = "the branch is protected"
FLAKY_PR = "GitHub fails while the PR is opened"
TAKEN = "a person's branch has the name already"
BROKEN_PR = "GitHub answers 500 to the PR"
SECONDARY = {"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
             "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}
# What github.com answers a push to a protected branch, from a pre-receive hook of the remote.
PROTECT_HOOK = """#!/bin/sh
while read old new ref; do
  case "$ref" in *issue-3-*)
    echo "error: GH006: Protected branch update failed for $ref." >&2
    echo "error: Changes must be made through a pull request." >&2
    exit 1;;
  esac
done
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


class Person:
    """A developer with a clone of the remote who pushes a commit of their own to a branch."""

    def __init__(self, forge: Forge, tmp: Path) -> None:
        self.remote = forge.git_root / f"{REPO}.git"
        self.clone = tmp / "person"
        self.pushed: dict[str, str] = {}

    def push_to(self, branch: str) -> str:
        if not self.clone.exists():
            subprocess.run(["git", "clone", "--quiet", str(self.remote), str(self.clone)], check=True,
                           capture_output=True)
        git(self.clone, "checkout", "--quiet", "-B", branch, "origin/main")
        (self.clone / "NOTES.md").write_text("work in progress by a person\n")
        git(self.clone, "add", "NOTES.md")
        git(self.clone, "-c", "user.name=Mona", "-c", "user.email=mona@example.com", "commit", "--quiet", "-m",
            "my own work on this branch")
        git(self.clone, "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}")
        self.pushed[branch] = git(self.clone, "rev-parse", "HEAD")
        return self.pushed[branch]


def branch_of(db: Database, number: int) -> str:
    with db.session() as session:
        task = session.query(Task).filter(Task.issue_number == number).one()
        assert task.branch, f"issue {number}'s task has no branch yet"
        return task.branch


def comments(forge: Forge, repo: str, number: int) -> str:
    return "\n".join(comment["body"] for comment in forge.github.issue(repo, number).comments)


def test_forge_faults_fail_with_actionable_reasons_never_forcing_and_never_a_second_pr(
        fault_settings: Callable[..., Settings], db: Database, model: FakeAnthropic, forge: Forge, tmp_path: Path,
        processes: list[Process]) -> None:
    person = Person(forge, tmp_path)
    fix = fixing_script()

    def push_meanwhile(body: dict[str, Any]) -> Any:  # as the agent finishes, someone pushes to its branch
        person.push_to(branch_of(db, 2))
        return fix[-1]

    serve_per_issue(model, {MISSING: fix, PERSON_PUSHED: [*fix[:-1], push_meanwhile], PROTECTED: fix,
                            FLAKY_PR: fix, TAKEN: fix, BROKEN_PR: fix})
    forge.github.add_repo(MISSING_REPO)  # GitHub knows it; its git repository is gone
    forge.github.add_issue(MISSING_REPO, 1, MISSING, ISSUE_BODY, labels=("forgecrew:backend",))
    for number, title in ((2, PERSON_PUSHED), (3, PROTECTED), (4, FLAKY_PR), (5, TAKEN), (6, BROKEN_PR)):
        forge.add_issue(number, title, ISSUE_BODY)
    person.push_to(branch_name(5, TAKEN))  # before forgecrew ever ran: not a branch of its own
    install_hook(person.remote, "pre-receive", PROTECT_HOOK)
    forge.github.fail_next("POST", rf"/repos/{REPO}/pulls$", 503, {"Retry-After": "1"})
    forge.github.fail_next("POST", rf"/repos/{REPO}/pulls$", 403, {"Retry-After": "1"}, SECONDARY)
    env = settings_env(fault_settings())
    coordinator, url = start_coordinator(env, tmp_path)
    processes.append(coordinator)
    worker = start_worker(env, tmp_path, "backend", "--concurrency", "4")
    processes.append(worker)
    started = time.monotonic()
    ids = {}
    for repo, number, title in ((MISSING_REPO, 1, MISSING), (REPO, 2, PERSON_PUSHED), (REPO, 3, PROTECTED),
                                (REPO, 4, FLAKY_PR), (REPO, 5, TAKEN)):
        response = deliver(url, labeled_issue("forgecrew:backend", repo=repo, number=number, title=title,
                                              body=ISSUE_BODY))
        assert response.status_code == 202, response.text
        ids[title] = response.json()["task_id"]
    ends = {title: wait_final(db, task_id) for title, task_id in ids.items()}
    elapsed = time.monotonic() - started
    # a 500 to the PR's creation may hide a PR GitHub made: not repeated, looked for, then failed
    forge.github.fail_next("POST", rf"/repos/{REPO}/pulls$", 500)
    response = deliver(url, labeled_issue("forgecrew:backend", number=6, title=BROKEN_PR, body=ISSUE_BODY))
    assert response.status_code == 202, response.text
    ends[BROKEN_PR] = wait_final(db, response.json()["task_id"])
    pulls, branches = forge.pulls(), forge.branches()
    pr_posts = [call.status for call in forge.github.calls("POST", r"/pulls$")]
    record_fault("8 forge faults (missing repo, person's push, person's branch, protected branch, 503, secondary "
                 "rate limit and 500 on the PR)", recovered=elapsed, lost=int(ends[FLAKY_PR].state != "pr_open"),
                 duplicated=max(len(pulls) - 1, 0), pr_requests=len(pr_posts),
                 forced_over=sum(branches.get(branch) != sha for branch, sha in person.pushed.items()))

    gone = ends[MISSING]
    assert gone.state == "failed" and gone.failure_reason, gone.details()
    assert gone.failure_reason.startswith("clone failed:") and f"{MISSING_REPO}.git" in gone.failure_reason
    assert "clone failed" in comments(forge, MISSING_REPO, 1)

    overtaken = ends[PERSON_PUSHED]
    assert overtaken.state == "failed" and overtaken.failure_reason, overtaken.details()
    assert overtaken.failure_reason.startswith(f"push of {overtaken.branch} to {REPO} was rejected because "
                                               "someone else pushed to the branch")
    assert "never forces over other people's commits: merge or delete that branch, then retry" in (
        overtaken.failure_reason)
    assert branches[overtaken.branch] == person.pushed[overtaken.branch]  # their commit, not forced over
    assert "someone else pushed to the branch" in comments(forge, REPO, 2)

    protected = ends[PROTECTED]
    assert protected.state == "failed" and protected.failure_reason, protected.details()
    assert "was rejected because the branch is protected: exempt forgecrew/* branches" in protected.failure_reason
    assert "GH006: Protected branch update failed" in protected.failure_reason  # and what GitHub said
    assert protected.branch not in branches

    flaky = ends[FLAKY_PR]
    assert flaky.state == "pr_open", (flaky.failure_reason, flaky.details())
    assert pr_posts == [503, 403, 201, 500]  # both refusals were safe to repeat; one PR made
    [pr] = pulls
    assert pr.head == flaky.branch and pr.number == flaky.pr_number

    taken = ends[TAKEN]  # a branch of that name that forgecrew never pushed is theirs, not replaced
    assert taken.state == "failed" and taken.failure_reason, taken.details()
    assert taken.failure_reason.startswith(f"push of {taken.branch} to {REPO} refused: the branch already exists "
                                           "with commits forgecrew did not make")
    assert branches[taken.branch] == person.pushed[taken.branch]

    broken = ends[BROKEN_PR]
    assert broken.state == "failed" and broken.failure_reason, broken.details()
    assert broken.failure_reason.startswith(f"GitHub failed opening a pull request for {broken.branch} in {REPO} "
                                            "(500: Internal Server Error); try again later")
    assert broken.branch in branches and broken.pr_number is None  # pushed, ready for a retry to reuse
    assert "/forgecrew retry" in comments(forge, REPO, 6)
    assert worker.alive()
