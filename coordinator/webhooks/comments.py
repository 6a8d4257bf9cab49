"""`issue_comment` created: a forgecrew command is recorded with its delivery; the coordinator carries it out.

Nothing is asked of the forge here (no permission check, no reaction): that would put network
calls inside intake's transaction. The command row commits with the delivery, then
coordinator.conversation.runner checks the author's access and acts. Edited and deleted comments
are no commands: only `created` is handled.
"""

from __future__ import annotations

from common.models import CommentCommand
from coordinator.conversation.parse import parse
from coordinator.intake import repo_allowed
from coordinator.webhooks.followups import PR_COMMENT, record_followup, task_of_pr
from coordinator.webhooks.router import Delivery, Outcome, Router

router = Router()


@router.on("issue_comment", "created")
def on_comment(delivery: Delivery) -> Outcome:
    payload, repo = delivery.payload, delivery.repo
    issue, comment = payload.get("issue"), payload.get("comment")
    if not repo or not isinstance(issue, dict) or not isinstance(comment, dict) or "id" not in comment:
        return Outcome("ignored: payload has no issue, comment or repository")
    if not repo_allowed(repo, delivery.settings.repo_allowlist):
        return Outcome(f"ignored: {repo} is not in FORGECREW_REPO_ALLOWLIST")
    command = parse(comment.get("body") if isinstance(comment.get("body"), str) else None)
    if command is None:
        return Outcome("ignored: no forgecrew command in the comment")
    if isinstance(issue.get("pull_request"), dict) and command.name in ("unknown", "request"):
        # on a forgecrew PR, words that are no command and an @mention's request are instructions
        task = task_of_pr(delivery, repo, int(issue["number"]), None)
        if task is not None:
            author = str((comment.get("user") or {}).get("login") or delivery.sender.get("login") or "?")
            return record_followup(delivery, task, PR_COMMENT, command.argument, author=author,
                                   comment_id=int(comment["id"]))
    row = CommentCommand(
        delivery_id=delivery.delivery_id, repo=repo, number=int(issue["number"]), comment_id=int(comment["id"]),
        author=str((comment.get("user") or {}).get("login") or delivery.sender.get("login") or "?")[:100],
        name=command.name, argument=command.argument,
        installation_id=(payload.get("installation") or {}).get("id"), state="pending")
    delivery.session.add(row)
    delivery.session.flush()
    return Outcome(f"command {row.id} recorded: {command.name}", extra={"command_id": row.id})
