"""`issues` opened/reopened/labeled: labelled issues from trusted people become tasks."""

from __future__ import annotations

from typing import Any

from common.specialties import TRIGGER_LABEL, profiles
from coordinator.dependencies import admit_new as admit_dependencies
from coordinator.intake import ActiveTaskExists, NewTask, insert_task, repo_allowed
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
    )
    try:
        task_id = insert_task(delivery.session, new, decision, actor=f"webhook:{delivery.delivery_id}")
    except ActiveTaskExists as exc:
        return Outcome(f"recorded: task {exc.task_id} is already active for this issue", task_id=exc.task_id)
    held = admit_dependencies(delivery.session, task_id, new.body, delivery.settings, repo=repo,
                              issue_number=new.issue_number, actor=f"webhook:{delivery.delivery_id}")
    if held is not None and len(decision.specialties) <= 1:  # waiting for its blockers, or refused for a cycle
        return Outcome(f"task {task_id} created ({decision.specialty}); {held}", task_id=task_id)
    return Outcome(f"task {task_id} created ({decision.specialty})", task_id=task_id, dispatch=True,
                   extra={"send": Send.first(task_id, decision.specialty, new.repo, new.issue_number)})
