"""A forgecrew pull request's own failing CI becomes a `ci` follow-up of the task whose PR it is.

check_suite and check_run `completed` with a failed conclusion, and `status` with state failure
or error, are matched to a task by repository and head branch, as reviews are (followups.py).
One failing commit sends many deliveries (its suite, each run, each status); the unique
(task, head_sha) key makes them one follow-up. Nothing is asked of the forge here: the runner
(coordinator/followups/ci.py) checks that the commit is still the PR's head and reads the
failing checks from the Checks API. These events come from Apps, hence `bots=True`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from common.db import insert_for
from common.forge.base import FAILED_CONCLUSIONS, FAILED_STATES
from common.models import Followup, Task
from coordinator.intake import repo_allowed
from coordinator.webhooks.followups import FOLLOWABLE
from coordinator.webhooks.router import Delivery, Outcome, Router

router = Router()
CI = "ci"


@dataclass(frozen=True)
class Failure:
    """What one delivery says about a commit's CI, read from the payload alone."""

    what: str  # "check run `lint`", "check suite of github-actions", "status `ci/jenkins`"
    verdict: str  # conclusion or state, e.g. failure
    failed: bool
    sha: str
    branches: tuple[str, ...]  # branches the commit is the head of, as far as the payload says
    pulls: tuple[dict[str, Any], ...] = ()  # the payload's pull_requests (empty for forks)


@router.on("check_suite", "completed", bots=True)
def on_check_suite(delivery: Delivery) -> Outcome:
    suite = delivery.payload.get("check_suite")
    if not isinstance(suite, dict):
        return Outcome("ignored: payload has no check_suite")
    app = suite.get("app") if isinstance(suite.get("app"), dict) else {}
    conclusion = str(suite.get("conclusion") or "")
    return _record(delivery, Failure(
        f"check suite of {app.get('slug') or app.get('name') or _login(delivery)}", conclusion or "none",
        conclusion in FAILED_CONCLUSIONS, str(suite.get("head_sha") or ""), _names(suite.get("head_branch")),
        _pulls(suite.get("pull_requests"))))


@router.on("check_run", "completed", bots=True)
def on_check_run(delivery: Delivery) -> Outcome:
    run = delivery.payload.get("check_run")
    if not isinstance(run, dict):
        return Outcome("ignored: payload has no check_run")
    suite = run.get("check_suite") if isinstance(run.get("check_suite"), dict) else {}
    conclusion = str(run.get("conclusion") or "")
    return _record(delivery, Failure(
        f"check run `{str(run.get('name') or '?')[:100]}`", conclusion or "none", conclusion in FAILED_CONCLUSIONS,
        str(run.get("head_sha") or suite.get("head_sha") or ""), _names(suite.get("head_branch")),
        _pulls(run.get("pull_requests") or suite.get("pull_requests"))))


@router.on("status", bots=True)
def on_status(delivery: Delivery) -> Outcome:
    data = delivery.payload
    sha, state = str(data.get("sha") or ""), str(data.get("state") or "")
    # `branches` lists branches containing the commit; only those whose head it is can be a PR's head now
    heads = tuple(str(b.get("name")) for b in data.get("branches") or []
                  if isinstance(b, dict) and (b.get("commit") or {}).get("sha") == sha and b.get("name"))
    return _record(delivery, Failure(f"status `{str(data.get('context') or 'default')[:100]}`", state or "none",
                                     state in FAILED_STATES, sha, heads))


def _record(delivery: Delivery, failure: Failure) -> Outcome:
    repo = delivery.repo
    if not failure.failed:
        return Outcome(f"ignored: {failure.what} is {failure.verdict}, not a failure")
    if not repo or not failure.sha:
        return Outcome("ignored: payload has no repository or commit")
    if not repo_allowed(repo, delivery.settings.repo_allowlist):
        return Outcome(f"ignored: {repo} is not in FORGECREW_REPO_ALLOWLIST")
    task = _task_of_branch(delivery, repo, failure.branches)
    if task is None:
        return Outcome(f"ignored: commit {failure.sha[:12]} is the head of no forgecrew pull request's branch")
    why_not = _not_our_head(delivery, task, failure)
    if why_not:
        return Outcome(f"ignored: {why_not}")
    return _insert(delivery, task, failure)


def _task_of_branch(delivery: Delivery, repo: str, branches: tuple[str, ...]) -> Task | None:
    """The newest task of this repository with an open PR whose branch is one of `branches`."""
    if not branches:
        return None
    query = select(Task).where(func.lower(Task.repo) == repo.lower(), Task.state.in_(FOLLOWABLE),
                               Task.branch.in_(branches), Task.pr_number.is_not(None))
    return delivery.session.scalars(query.order_by(Task.id.desc()).limit(1)).first()


def _not_our_head(delivery: Delivery, task: Task, failure: Failure) -> str | None:
    """Why the payload's own pull_requests show this is not the head of the task's PR (None: it may be).

    GitHub lists the PRs whose head is the commit's branch in this repository; a fork's has none
    listed, and the runner's head check at decide time settles what the payload cannot.
    """
    if not failure.pulls:
        return None
    repo_id = (delivery.payload.get("repository") or {}).get("id")
    ours = [p for p in failure.pulls if p.get("number") == task.pr_number]
    if not ours:
        return f"{failure.what} concerns pull request(s) {_numbers(failure.pulls)}, not #{task.pr_number}"
    head = ours[0].get("head") if isinstance(ours[0].get("head"), dict) else {}
    head_repo = head.get("repo") if isinstance(head.get("repo"), dict) else {}
    if repo_id is not None and head_repo.get("id") not in (None, repo_id):
        return f"pull request #{task.pr_number}'s head is in another repository"
    if head.get("sha") and head["sha"] != failure.sha:
        return f"commit {failure.sha[:12]} is no longer the head of #{task.pr_number} ({str(head['sha'])[:12]} is)"
    return None


def _insert(delivery: Delivery, task: Task, failure: Failure) -> Outcome:
    """The follow-up row unless one for this task and commit exists; the key, not a lookup, decides."""
    author = _login(delivery)[:100]
    values = {"task_id": task.id, "delivery_id": delivery.delivery_id, "kind": CI, "author": author,
              "instructions": f"{failure.what} concluded {failure.verdict} on {failure.sha}",
              "head_sha": failure.sha, "installation_id": (delivery.payload.get("installation") or {}).get("id"),
              "state": "received"}
    dialect = delivery.session.get_bind().dialect.name
    statement = insert_for(dialect)(Followup).values(**values).on_conflict_do_nothing(
        index_elements=["task_id", "head_sha"]).returning(Followup.id)
    followup_id = delivery.session.scalar(statement)
    if followup_id is None:
        existing = delivery.session.scalar(select(Followup.id).where(
            Followup.task_id == task.id, Followup.head_sha == failure.sha))
        return Outcome(f"ignored: follow-up {existing} already takes the failing CI of {failure.sha[:12]}",
                       task_id=task.id)
    return Outcome(f"follow-up {followup_id} recorded for task {task.id}: ci ({failure.what} {failure.verdict})",
                   task_id=task.id, extra={"followup_id": followup_id})


def _names(branch: Any) -> tuple[str, ...]:
    return (branch,) if isinstance(branch, str) and branch else ()


def _pulls(items: Any) -> tuple[dict[str, Any], ...]:
    return tuple(item for item in items or () if isinstance(item, dict))


def _numbers(pulls: tuple[dict[str, Any], ...]) -> str:
    return ", ".join(f"#{p.get('number')}" for p in pulls[:5])


def _login(delivery: Delivery) -> str:
    return str(delivery.sender.get("login") or "ci")
