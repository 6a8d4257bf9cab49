"""Reviews and review comments on a forgecrew pull request become follow-ups of the task whose PR it is.

A delivery is matched to a task by repository and head branch (the PR's head must be the task's
branch in the task's repository, as in lifecycle.py), so a fork with a look-alike branch never
feeds a task. Nothing is asked of the forge here: the follow-up row commits with the delivery as
`received`, then coordinator.followups.runner checks the author's access and starts it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from common.models import Followup, Task
from common.states import TaskState
from coordinator.conversation.parse import _clean, parse
from coordinator.intake import repo_allowed
from coordinator.webhooks.payloads import Envelope
from coordinator.webhooks.router import Delivery, Outcome, Router

router = Router()
# A task in these states has a PR a follow-up can still change (one running a follow-up queues the next).
FOLLOWABLE = tuple(s.value for s in (TaskState.PR_OPEN, TaskState.QUEUED, TaskState.RUNNING, TaskState.TESTING,
                                     TaskState.FAILED))
REVIEW = "review"
COMMENT = "comment"  # on a line of the diff (pull_request_review_comment)
PR_COMMENT = "pr_comment"  # in the pull request's conversation (issue_comment)


@router.on("pull_request_review", "submitted")
def on_review(delivery: Delivery) -> Outcome:
    review = delivery.payload.get("review")
    if not isinstance(review, dict) or "id" not in review:
        return Outcome("ignored: payload has no review")
    state, body = str(review.get("state") or "").lower(), review.get("body") if isinstance(review.get("body"), str) else ""
    mention = parse(body)
    if state != "changes_requested" and not (state == "commented" and mention is not None):
        return Outcome(f"ignored: a {state or 'blank'} review without an @forgecrew request")
    instructions = _clean(body or "")
    return _record(delivery, REVIEW, instructions, author=_login(review.get("user")), review_id=int(review["id"]))


@router.on("pull_request_review_comment", "created")
def on_review_comment(delivery: Delivery) -> Outcome:
    comment = delivery.payload.get("comment")
    if not isinstance(comment, dict) or "id" not in comment:
        return Outcome("ignored: payload has no review comment")
    body = comment.get("body") if isinstance(comment.get("body"), str) else ""
    review_id = comment.get("pull_request_review_id")
    return _record(delivery, COMMENT, _clean(body), author=_login(comment.get("user")),
                   review_id=int(review_id) if isinstance(review_id, int) else None, comment_id=int(comment["id"]))


def task_of_pr(delivery: Delivery, repo: str, number: int, head_ref: str | None) -> Task | None:
    """The newest task of this repository whose branch is the PR's head (or, without a head, whose PR it is)."""
    query = select(Task).where(func.lower(Task.repo) == repo.lower(), Task.state.in_(FOLLOWABLE))
    query = query.where(Task.branch == head_ref) if head_ref else query.where(Task.pr_number == number)
    return delivery.session.scalars(query.order_by(Task.id.desc()).limit(1)).first()


def record_followup(delivery: Delivery, task: Task, kind: str, instructions: str, *, author: str,
                    review_id: int | None = None, comment_id: int | None = None) -> Outcome:
    """The follow-up row, in the delivery's transaction; the runner takes it after the commit."""
    row = Followup(task_id=task.id, delivery_id=delivery.delivery_id, kind=kind, author=author[:100],
                   instructions=instructions, review_id=review_id, comment_id=comment_id,
                   installation_id=(delivery.payload.get("installation") or {}).get("id"), state="received")
    delivery.session.add(row)
    delivery.session.flush()
    return Outcome(f"follow-up {row.id} recorded for task {task.id}: {kind} by {author}", task_id=task.id,
                   extra={"followup_id": row.id})


def _record(delivery: Delivery, kind: str, instructions: str, *, author: str, review_id: int | None,
            comment_id: int | None = None) -> Outcome:
    envelope, repo = Envelope.model_validate(delivery.payload), delivery.repo
    pr = envelope.pull_request
    if pr is None or not repo:
        return Outcome("ignored: payload has no pull request or repository")
    if not repo_allowed(repo, delivery.settings.repo_allowlist):
        return Outcome(f"ignored: {repo} is not in FORGECREW_REPO_ALLOWLIST")
    head = pr.head
    if head is None or head.repo is None or head.repo.full_name.lower() != repo.lower():
        return Outcome(f"ignored: pull request #{pr.number}'s head is not in {repo}")
    task = task_of_pr(delivery, repo, pr.number, head.ref)
    if task is None:
        return Outcome(f"ignored: pull request #{pr.number} is no forgecrew task's")
    return record_followup(delivery, task, kind, instructions, author=author, review_id=review_id,
                           comment_id=comment_id)


def _login(user: Any) -> str:
    return str((user or {}).get("login") or "?") if isinstance(user, dict) else "?"
