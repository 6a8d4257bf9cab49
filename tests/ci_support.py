"""CI webhook payloads from GitHub's recorded examples (check_suite, check_run, status), pointed at a test's
repository, branch and commit; the fields forgecrew reads are the ones changed."""

from __future__ import annotations

import copy
from typing import Any

from tests.support import payload

APP_SENDER = {"login": "github-actions[bot]", "id": 41898282, "type": "Bot"}


def _point_at(data: dict[str, Any], repo: str) -> dict[str, Any]:
    owner, name = repo.split("/")
    data["repository"].update(full_name=repo, name=name)
    data["repository"]["owner"]["login"] = owner
    data["sender"] = {**data["sender"], **APP_SENDER}
    return data


def _pulls(data: dict[str, Any], pulls: list[dict[str, Any]], *, number: int | None, branch: str, sha: str,
           head_repo_id: int | None) -> list[dict[str, Any]]:
    """The recorded pull_requests entry for PR `number` (None: an empty list, as GitHub sends for forks)."""
    if number is None:
        return []
    entry = copy.deepcopy(pulls[0])
    entry["number"] = number
    entry["head"].update(ref=branch, sha=sha)
    entry["head"]["repo"]["id"] = head_repo_id if head_repo_id is not None else data["repository"]["id"]
    return [entry]


def check_suite_payload(repo: str, branch: str, sha: str, *, conclusion: str = "failure", pr: int | None = None,
                        pr_head_sha: str | None = None, head_repo_id: int | None = None) -> dict[str, Any]:
    """check_suite completed, as GitHub sends it."""
    data = _point_at(copy.deepcopy(payload("check_suite", "completed")), repo)
    suite = data["check_suite"]
    suite.update(head_branch=branch, head_sha=sha, after=sha, conclusion=conclusion)
    suite["pull_requests"] = _pulls(data, suite["pull_requests"], number=pr, branch=branch,
                                    sha=pr_head_sha or sha, head_repo_id=head_repo_id)
    return data


def check_run_payload(repo: str, branch: str, sha: str, *, name: str = "tests", conclusion: str = "failure",
                      pr: int | None = None, pr_head_sha: str | None = None,
                      head_repo_id: int | None = None) -> dict[str, Any]:
    """check_run completed, as GitHub sends it."""
    data = _point_at(copy.deepcopy(payload("check_run", "completed")), repo)
    run = data["check_run"]
    run.update(head_sha=sha, name=name, conclusion=conclusion)
    run["check_suite"].update(head_branch=branch, head_sha=sha, after=sha, conclusion=conclusion)
    pulls = _pulls(data, run["pull_requests"], number=pr, branch=branch, sha=pr_head_sha or sha,
                   head_repo_id=head_repo_id)
    run["pull_requests"] = run["check_suite"]["pull_requests"] = pulls
    return data


def status_payload(repo: str, branch: str, sha: str, *, state: str = "failure", context: str = "ci/jenkins",
                   branch_head: str | None = None) -> dict[str, Any]:
    """status, as GitHub sends it: `branches` lists the branch, at `branch_head` (default: the commit itself)."""
    data = _point_at(copy.deepcopy(payload("status", "payload")), repo)
    data.update(sha=sha, state=state, context=context, description=f"{context} says {state}")
    data["commit"]["sha"] = sha
    entry = copy.deepcopy(data["branches"][0])
    entry["name"] = branch
    entry["commit"]["sha"] = branch_head or sha
    data["branches"] = [entry]
    return data
