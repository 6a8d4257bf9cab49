"""Conversation tests' common ground: a seeded fake GitHub, and follow-up payloads from GitHub's recorded
examples with the fields forgecrew reads changed."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.fakes.github_server import FakeGitHub
from tests.support import payload


@contextmanager
def people_on_github(repo: str, token: str) -> Iterator[FakeGitHub]:
    """A fake GitHub with issue 7 by alice, a writer `maintainer` and a `reader`; no request outside the spec."""
    with FakeGitHub() as server:
        server.add_token(token, login="forgecrew[bot]")
        server.add_repo(repo)
        server.add_issue(repo, 7, "Crash on empty input", "Steps: run with ''", author="alice")
        server.set_permission(repo, "maintainer", "write")
        server.set_permission(repo, "reader", "read")
        yield server
        assert server.violations == [], "requests outside GitHub's OpenAPI description"


def _point_at(data: dict[str, Any], repo: str, number: int, branch: str, sender: str) -> dict[str, Any]:
    owner, name = repo.split("/")
    data["repository"].update(full_name=repo, name=name)
    data["repository"]["owner"]["login"] = owner
    pull = data["pull_request"]
    pull["number"] = number
    pull["head"]["ref"] = branch
    pull["head"]["repo"] = {**pull["head"]["repo"], "full_name": repo, "name": name}
    data["sender"] = {**data["sender"], "login": sender, "type": "User"}
    return data


def review_payload(repo: str, number: int, branch: str, *, review_id: int, author: str,
                   state: str = "changes_requested", body: str | None = "Please change this.") -> dict[str, Any]:
    """pull_request_review submitted, as GitHub sends it."""
    data = _point_at(copy.deepcopy(payload("pull_request_review", "submitted")), repo, number, branch, author)
    data["review"].update(id=review_id, state=state, body=body,
                          user={**data["review"]["user"], "login": author, "type": "User"})
    return data


def review_comment_payload(repo: str, number: int, branch: str, *, comment_id: int, author: str, body: str,
                           path: str, line: int, review_id: int | None = None) -> dict[str, Any]:
    """pull_request_review_comment created, as GitHub sends it."""
    data = _point_at(copy.deepcopy(payload("pull_request_review_comment", "created")), repo, number, branch, author)
    data["comment"].update(id=comment_id, body=body, path=path, line=line, pull_request_review_id=review_id,
                           in_reply_to_id=None, user={**data["comment"]["user"], "login": author, "type": "User"})
    return data


def pr_comment_payload(repo: str, number: int, *, comment_id: int, author: str, body: str) -> dict[str, Any]:
    """issue_comment created on a pull request (the issue carries `pull_request`)."""
    data = copy.deepcopy(payload("issue_comment", "created"))
    name = repo.split("/")[1]
    data["repository"].update(full_name=repo, name=name)
    data["issue"]["number"] = number
    data["issue"]["pull_request"] = {"url": f"https://api.github.com/repos/{repo}/pulls/{number}"}
    data["comment"].update(id=comment_id, body=body, user={**data["comment"]["user"], "login": author, "type": "User"})
    data["sender"] = {**data["sender"], "login": author, "type": "User"}
    return data
