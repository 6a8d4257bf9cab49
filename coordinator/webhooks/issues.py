"""`issues` opened/reopened/labeled: labelled issues from trusted people become tasks."""

from __future__ import annotations

from typing import Any

from common.models import Task
from common.specialties import PRIORITY_LABELS, TRIGGER_LABEL, label_priority, profiles
from common.states import TaskState
from coordinator import workflow
from coordinator.dependencies import admit_new as admit_dependencies
from coordinator.intake import ActiveTaskExists, NewTask, insert_pending, insert_task, repo_allowed
from coordinator.priority import reprioritise
from coordinator.sender import Send
from coordinator.triage import RuleTriage, route_label_specialty
from coordinator.webhooks.router import Delivery, Outcome, Router

router = Router()


def is_trigger(label: str, known: set[str]) -> bool:
    return label == TRIGGER_LABEL or route_label_specialty(label) in known


def _label_names(issue: dict[str, Any]) -> list[str]:
    return [label.get("name", "") for label in issue.get("labels") or [] if isinstance(label, dict)]


@router.on("issues", "opened", "reopened", "labeled")
def on_issue(delivery: Delivery) -> Outcome:
    payload, settings = delivery.payload, delivery.settings
    issue = payload.get("issue")
    repo = delivery.repo
    if not isinstance(issue, dict) or not repo or "number" not in issue:
        return Outcome("ignored: payload has no issue or repository")
    if "pull_request" in issue:
        return Outcome("ignored: event is about a pull request")
    if not repo_allowed(repo, settings.repo_allowlist):
        return Outcome(f"ignored: {repo} is not in FORGECREW_REPO_ALLOWLIST")
    if issue.get("state") == "closed":
        return Outcome("ignored: issue is closed")
    known = set(profiles(settings))
    if delivery.action == "labeled" and (payload.get("label") or {}).get("name") in PRIORITY_LABELS:
        return _reprioritise(delivery, repo, issue)
    refusal = _refusal(delivery, issue, known)
    if refusal:
        return Outcome(refusal)
    return _start(delivery, repo, issue, known)


def _refusal(delivery: Delivery, issue: dict[str, Any], known: set[str]) -> str | None:
    """Why this delivery must not start work, or None when it may."""
    labels = _label_names(issue)
    if delivery.action == "labeled":
        label = (delivery.payload.get("label") or {}).get("name", "")
        if is_trigger(label, known):
            return None  # adding a label already needs triage access on GitHub
        specialty = route_label_specialty(label)
        if specialty and specialty not in known:
            return f"ignored: unknown specialty {specialty!r} in label {label!r} (known: {', '.join(sorted(known))})"
        return f"ignored: label {label!r} is not a forgecrew trigger"
    if not any(is_trigger(label, known) for label in labels):
        return "ignored: issue has no forgecrew label"
    association = str(issue.get("author_association", "NONE")).upper()
    if association not in delivery.settings.trusted_associations:
        author = (issue.get("user") or {}).get("login", "?")
        return f"untrusted: {author} is {association}; a maintainer must add the label"
    return None


def _start(delivery: Delivery, repo: str, issue: dict[str, Any], known: set[str]) -> Outcome:
    labels = _label_names(issue)
    added = (delivery.payload.get("label") or {}).get("name")
    if added and added not in labels:
        labels.append(added)
    # a route label that was just added takes precedence over older ones
    labels.sort(key=lambda name: name != added)
    decision = RuleTriage(profiles(delivery.settings))(
        title=issue.get("title") or "", body=issue.get("body") or "", labels=labels
    )
    new = NewTask(
        repo=repo,
        issue_number=int(issue["number"]),
        title=issue.get("title") or "",
        body=issue.get("body") or "",
        requested_by=delivery.sender.get("login", ""),
        installation_id=(delivery.payload.get("installation") or {}).get("id"),
        priority=label_priority(labels),
    )
    # LLM triage (off by default) when no label decides: the task waits as pending for the model
    llm = delivery.settings.triage_llm and not RuleTriage(profiles(delivery.settings)).routed_by_label(labels)
    insert = insert_pending if llm else insert_task
    try:
        task_id = insert(delivery.session, new, decision, actor=f"webhook:{delivery.delivery_id}")
    except ActiveTaskExists as exc:
        return (_added_step(delivery, exc.task_id, added, known, labels)
                or Outcome(f"recorded: task {exc.task_id} is already active for this issue", task_id=exc.task_id))
    held = admit_dependencies(delivery.session, task_id, new.body, delivery.settings, repo=repo,
                              issue_number=new.issue_number, actor=f"webhook:{delivery.delivery_id}")
    if llm:  # classified after the commit (coordinator/triage_runner.py), then sent or left waiting
        return Outcome(f"task {task_id} created (waiting for LLM triage)" + (f"; {held}" if held else ""),
                       task_id=task_id, dispatch=True, extra={"triage_id": task_id})
    if held is not None and len(decision.specialties) <= 1:  # waiting for its blockers, or refused for a cycle
        return Outcome(f"task {task_id} created ({decision.specialty}); {held}", task_id=task_id)
    if len(decision.specialties) > 1:  # several specialties' labels: one workflow, sent with its canvas
        task = delivery.session.get(Task, task_id)
        assert task is not None
        workflow.create_steps(delivery.session, task, decision.specialties, delivery.settings)
        return Outcome(f"task {task_id} created (workflow: {', '.join(s.specialty for s in task.steps)})",
                       task_id=task_id, dispatch=True)
    return Outcome(f"task {task_id} created ({decision.specialty})", task_id=task_id, dispatch=True,
                   extra={"send": Send.first(task_id, decision.specialty, new.repo, new.issue_number,
                                             priority=new.priority)})


def _reprioritise(delivery: Delivery, repo: str, issue: dict[str, Any]) -> Outcome:
    """A priority label on an issue: its active task's priority changes (adding one needs triage access)."""
    labels = [*_label_names(issue), (delivery.payload.get("label") or {}).get("name", "")]
    said = reprioritise(delivery.session, repo, int(issue["number"]), labels,
                        actor=f"webhook:{delivery.delivery_id}")
    return Outcome(said.description, task_id=said.task_id, dispatch=said.resend)


def _added_step(delivery: Delivery, task_id: int | None, label: str | None, known: set[str],
                labels: list[str]) -> Outcome | None:
    """A second specialty label added to an issue whose task is active: a workflow step, when the workflow can
    take one. A task no specialty label chose (the trigger label and the rules did) is left as it was."""
    specialty = route_label_specialty(label or "")
    if task_id is None or delivery.action != "labeled" or specialty not in known:
        return None
    task = delivery.session.get(Task, task_id, with_for_update=True)
    assert task is not None and specialty is not None
    routed = {route_label_specialty(name) for name in labels if name != label}
    if task.workflow_step is None and task.specialty not in routed:
        return None
    said = workflow.add_step(delivery.session, task, specialty, delivery.settings)
    if not said.startswith("added"):
        return Outcome(f"recorded: {said}", task_id=task_id)
    # not started yet: send the canvas again with the new step (the old message finds itself stale)
    resend = task.state in (TaskState.TRIAGED, TaskState.QUEUED) and task.workflow_step == 0
    return Outcome(said, task_id=task_id, dispatch=resend)
