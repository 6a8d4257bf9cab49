"""A task follows its pull request and its issue: merged -> done; closed unmerged, or the issue closed -> cancelled.

Deliveries are matched to tasks by repository and PR number, and the PR's head must be the task's
branch in the same repository, so a PR that is not the task's (another PR number, a fork with a
look-alike branch) never moves it. Bots' deliveries count here: a merge bot's merge is a merge.
"""

from __future__ import annotations

from sqlalchemy import func, select

from common.leases import release
from common.models import Task
from common.states import ACTIVE_STATES, TaskState
from common.transitions import transition
from coordinator.dependencies import clear_blocker
from coordinator.webhooks.payloads import Envelope, PullRequest
from coordinator.webhooks.router import Delivery, Outcome, Router

router = Router()

S = TaskState
# An issue closed as not planned takes an open PR's task with it; "completed" leaves the PR to decide,
# since merging a PR that says "Fixes #n" closes the issue too, often before the PR's own delivery.
NOT_PLANNED = "not_planned"


@router.on("pull_request", "closed", bots=True)
def on_pull_request_closed(delivery: Delivery) -> Outcome:
    envelope, repo, who = _context(delivery)
    pr = envelope.pull_request
    if pr is None or not repo:
        return Outcome("ignored: payload has no pull request or repository")
    tasks = [task for task in _tasks_of_pr(delivery, repo, pr.number) if _is_task_branch(task, pr, repo)]
    if not tasks:
        return Outcome(f"ignored: pull request #{pr.number} is no forgecrew task's")
    moved = []
    for task in tasks:
        if pr.merged:
            moved.append(_finish(delivery, task, f"pull request #{pr.number} merged by {who}"))
        else:
            moved.append(_cancel(delivery, task, f"pull request #{pr.number} closed unmerged by {who}"))
    unblocked = [task.issue_number for task in tasks if pr.merged and task.issue_number is not None]
    return _released(delivery, repo, Outcome("; ".join(moved), task_id=tasks[-1].id), unblocked,
                     f"its forgecrew PR #{pr.number} was merged", overlapped=True)


@router.on("issues", "closed", bots=True)
def on_issue_closed(delivery: Delivery) -> Outcome:
    envelope, repo, who = _context(delivery)
    issue = envelope.issue
    if issue is None or not repo:
        return Outcome("ignored: payload has no issue or repository")
    if issue.pull_request is not None:
        return Outcome("ignored: event is about a pull request")
    reason = issue.state_reason or "completed"
    tasks = delivery.session.scalars(
        select(Task).where(func.lower(Task.repo) == repo.lower(), Task.issue_number == issue.number,
                           Task.state.in_([s.value for s in (*ACTIVE_STATES, S.PR_OPEN)]))
        .order_by(Task.id).with_for_update()
    ).all()
    moved, left = [], []
    for task in tasks:
        if task.state == S.PR_OPEN and reason != NOT_PLANNED:
            left.append(f"task {task.id}'s pull request #{task.pr_number} decides")
            continue
        moved.append(_cancel(delivery, task, f"issue #{issue.number} closed ({reason}) by {who}"))
    if not moved and not left:
        return _released(delivery, repo, Outcome(f"ignored: issue #{issue.number} has no task in flight"),
                         [issue.number], f"#{issue.number} was closed ({reason}) by {who}")
    return _released(delivery, repo, Outcome("; ".join(moved + [f"recorded: {note}" for note in left]),
                                             task_id=tasks[-1].id),
                     [issue.number], f"#{issue.number} was closed ({reason}) by {who}", overlapped=bool(moved))


def _released(delivery: Delivery, repo: str, outcome: Outcome, blockers: list[int], why: str, *,
              overlapped: bool = False) -> Outcome:
    """Clear the dependencies on `blockers`; after the commit, the scheduler looks at the repository's waiting
    tasks (`overlapped`: a PR ended or a task stopped, which may free a task that waits for its files)."""
    cleared = [task_id for number in blockers for task_id in clear_blocker(delivery.session, repo, number, why)]
    if cleared:
        outcome.description += f"; unblocked task(s) {', '.join(map(str, sorted(set(cleared))))}"
    if cleared or overlapped:
        outcome.extra["release_repo"] = repo
    return outcome


def _context(delivery: Delivery) -> tuple[Envelope, str | None, str]:
    """The parsed payload, its repository and who acted: what every lifecycle handler starts from."""
    return Envelope.model_validate(delivery.payload), delivery.repo, delivery.sender.get("login") or "someone"


def _tasks_of_pr(delivery: Delivery, repo: str, number: int) -> list[Task]:
    """The repository's tasks on PR `number` that a close can still move (locked, oldest first)."""
    return list(delivery.session.scalars(
        select(Task).where(func.lower(Task.repo) == repo.lower(), Task.pr_number == number,
                           Task.state.not_in([S.DONE.value, S.CANCELLED.value]))
        .order_by(Task.id).with_for_update()
    ))


def _is_task_branch(task: Task, pr: PullRequest, repo: str) -> bool:
    """The PR's head is the branch the task pushed, in the task's repository (not a fork's)."""
    head = pr.head
    if head is None or head.repo is None or head.repo.full_name.lower() != repo.lower():
        return False
    return task.branch is None or task.branch == head.ref


def _finish(delivery: Delivery, task: Task, detail: str) -> str:
    """A merged PR ends its task (a failed follow-up's too); one still running on it is stopped: its work
    cannot land."""
    if task.state in ACTIVE_STATES:
        return _cancel(delivery, task, f"{detail} while a follow-up was {task.state}")
    transition(delivery.session, task, S.DONE, actor=_actor(delivery), detail=detail)
    return f"task {task.id} done: {detail}"


def _cancel(delivery: Delivery, task: Task, detail: str) -> str:
    """What an operator's cancel does, in the delivery's transaction: state, event, and the lease cleared.

    A worker running the task then fails its next fenced write and stops (common.leases.cancellation),
    as after `forgecrew tasks cancel`. Operations.cancel is not called: it commits in a transaction of
    its own, which SQLite's single writer would make wait on this one.
    """
    if task.state == S.FAILED:
        return f"recorded: task {task.id} had already failed ({detail})"
    transition(delivery.session, task, S.CANCELLED, actor=_actor(delivery), detail=detail)
    release(task)
    return f"task {task.id} cancelled: {detail}"


def _actor(delivery: Delivery) -> str:
    return f"webhook:{delivery.delivery_id}"
