"""A GitHub REST server on 127.0.0.1 that the real PyGithub talks to in tests.

Routes and request-body schemas come from GitHub's OpenAPI description in
../shared/fixtures/github-rest/openapi-subset.json; response bodies are GitHub's own
examples from the same file with the fields that carry state overridden.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import re
import secrets
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import jsonschema
import jwt

from tests.support import FIXTURES

FIXTURE = FIXTURES / "github-rest" / "openapi-subset.json"
DOCS = "https://docs.github.com/rest"
APP_TOKEN_OP = "apps/create-installation-access-token"
APP_LOGIN = "forgecrew[bot]"  # who installation tokens act as
PAGING = {"per_page": {"type": "integer"}, "page": {"type": "integer"}}
# Operations PyGithub needs that the subset leaves out, in GitHub's documented shape.
EXTRA_OPERATIONS = [
    ("get", "/repos/{owner}/{repo}/issues/{issue_number}/comments", "issues/list-comments", PAGING),
    ("get", "/repos/{owner}/{repo}/pulls/{pull_number}", "pulls/get", {}),
]
# GitHub's REST API cannot take a pull request out of draft; PyGithub's PullRequest.mark_ready_for_review
# sends this GraphQL mutation to /graphql, the one GraphQL operation the fake serves.
GRAPHQL_OP = "graphql"
READY_MUTATION = "markPullRequestReadyForReview"
GRAPHQL_BODY = {"type": "object", "required": ["query"],
                "properties": {"query": {"type": "string"}, "variables": {"type": "object"}}}
ROLE_TO_PERMISSION = {"admin": "admin", "maintain": "write", "write": "write", "triage": "read",
                      "read": "read", "none": "none"}


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0 `nullable: true` becomes JSON Schema's extra "null" type."""
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _nullable(value) for key, value in node.items()}
    if out.pop("nullable", False) is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@functools.cache
def load_spec() -> dict[str, Any]:
    """The OpenAPI subset, read once per test process."""
    return _nullable(json.loads(FIXTURE.read_text()))


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    operation_id: str
    pattern: re.Pattern[str]
    body_schema: dict[str, Any] | None = None
    body_required: bool = False
    query: dict[str, dict[str, Any]] = field(default_factory=dict)


def _parameter(spec: dict[str, Any], param: dict[str, Any]) -> dict[str, Any]:
    ref = param.get("$ref")
    return spec["components"]["parameters"][ref.rsplit("/", 1)[1]] if ref else param


def _pattern(template: str, path_types: dict[str, str]) -> re.Pattern[str]:
    def group(match: re.Match[str]) -> str:
        name = match.group(1)
        return rf"(?P<{name}>\d+)" if path_types.get(name) == "integer" else rf"(?P<{name}>[^/]+)"
    return re.compile("^" + re.sub(r"\{(\w+)\}", group, template) + "$")


@functools.cache
def operations() -> tuple[Operation, ...]:
    """Every operation the fake serves: the subset's twelve, EXTRA_OPERATIONS and POST /graphql."""
    spec, found = load_spec(), []
    for template, item in spec["paths"].items():
        for method, op in item.items():
            params = [_parameter(spec, p) for p in op.get("parameters", [])]
            path_types = {p["name"]: p["schema"].get("type", "") for p in params if p["in"] == "path"}
            body = op.get("requestBody", {})
            schema = body.get("content", {}).get("application/json", {}).get("schema")
            found.append(Operation(
                method.upper(), template, op["operationId"], _pattern(template, path_types),
                {**schema, "components": spec["components"]} if schema else None, bool(body.get("required")),
                {p["name"]: p["schema"] for p in params if p["in"] == "query"}))
    for method, template, op_id, query in EXTRA_OPERATIONS:
        found.append(Operation(method.upper(), template, op_id,
                               _pattern(template, {"issue_number": "integer", "pull_number": "integer"}), query=query))
    found.append(Operation("POST", "/graphql", GRAPHQL_OP, re.compile("^/graphql$"), GRAPHQL_BODY, True))
    return tuple(found)


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    at: float
    status: int = 0


@dataclass
class FakeIssue:
    number: int
    title: str
    body: str | None
    author: str
    labels: list[str] = field(default_factory=list)
    comments: list[dict[str, Any]] = field(default_factory=list)
    state: str = "open"
    head: str | None = None  # set on pull requests, which GitHub also serves as issues
    head_owner: str = ""
    base: str = ""
    draft: bool = False
    reviews: list[dict[str, Any]] = field(default_factory=list)  # pull requests': id, login, state, body
    head_sha: str | None = None  # a pull request's head commit; None: FakeGitHub.branch_head, else a made-up sha
    review_comments: list[dict[str, Any]] = field(default_factory=list)  # id, login, path, line, body, review_id


@dataclass
class FakeRepo:
    full_name: str
    default_branch: str = "main"
    private: bool = False
    roles: dict[str, str] = field(default_factory=dict)
    issues: dict[int, FakeIssue] = field(default_factory=dict)
    check_runs: list[dict[str, Any]] = field(default_factory=list)  # id, head_sha, name, conclusion, output, notes
    statuses: list[dict[str, Any]] = field(default_factory=list)  # id, sha, state, context, description, target_url

    @property
    def owner(self) -> str:
        return self.full_name.split("/")[0]


class Reply(Exception):
    """An early answer (error or scripted fault) from inside the request pipeline."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def error_body(status: int, message: str, **extra: Any) -> dict[str, Any]:
    """GitHub's basic-error shape."""
    return {"message": message, "documentation_url": DOCS, "status": str(status), **extra}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        status, headers, payload = self.server.fake.handle(self.command, self.path, self.headers, raw)
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeGitHub


class FakeGitHub:
    """Stateful GitHub REST API on an ephemeral 127.0.0.1 port; use as a context manager."""

    def __init__(self, *, app_id: int | None = None, app_public_key: str | None = None,
                 token_lifetime: float = 3600.0) -> None:
        self.app_id, self.app_public_key, self.token_lifetime = app_id, app_public_key, token_lifetime
        self.requests: list[RecordedRequest] = []
        self.violations: list[str] = []
        self.minted: list[dict[str, Any]] = []
        self.repos: dict[str, FakeRepo] = {}
        self.installations: set[int] = set()
        self._tokens: dict[str, tuple[float, str, str]] = {}  # token -> (expiry, login, user type)
        self._caller = ("", "User")
        self._faults: list[tuple[str, re.Pattern[str], Reply, bool, Callable[[], None] | None]] = []
        self._lock = threading.RLock()
        self._comment_ids = 0
        # where a branch of a repository is now (e.g. read from the git repository the pushes go to)
        self.branch_head: Callable[[str, str], str | None] | None = None
        self._remaining = 5000
        self._examples = {name: json.dumps(ex["value"]) for name, ex in load_spec()["components"]["examples"].items()}
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self.api_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.web_url = self.api_url
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> FakeGitHub:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-github", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    # -- seeding ---------------------------------------------------------------------------
    def add_token(self, token: str, login: str = "forgecrew-user") -> None:
        """Accept `token` as a personal access token of `login` until the server stops."""
        self._tokens[token] = (math.inf, login, "User")

    def add_installation(self, installation_id: int) -> None:
        self.installations.add(installation_id)

    def add_repo(self, full_name: str, *, default_branch: str = "main", private: bool = False) -> FakeRepo:
        with self._lock:
            return self.repos.setdefault(full_name, FakeRepo(full_name, default_branch, private))

    def add_issue(self, full_name: str, number: int, title: str, body: str | None = "", *,
                  author: str = "octocat", labels: tuple[str, ...] = ()) -> FakeIssue:
        with self._lock:
            issue = FakeIssue(number, title, body, author, list(labels))
            self.repos[full_name].issues[number] = issue
            return issue

    def add_comment(self, full_name: str, number: int, body: str, *, author: str = "octocat",
                    kind: str = "User") -> dict[str, Any]:
        """A comment by `author`; kind "Bot" makes it an app's comment."""
        with self._lock:
            self._comment_ids += 1
            comment = {"id": self._comment_ids, "body": body, "login": author, "type": kind, "at": _now_iso()}
            self.repos[full_name].issues[number].comments.append(comment)
            return comment

    def add_review(self, full_name: str, number: int, *, author: str, state: str, body: str = "",
                   comments: tuple[dict[str, Any], ...] = ()) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A submitted review (state CHANGES_REQUESTED, COMMENTED, APPROVED) with line comments ({path, line, body})."""
        with self._lock:
            pull = self.repos[full_name].issues[number]
            self._comment_ids += 1
            review = {"id": self._comment_ids, "login": author, "state": state, "body": body, "at": _now_iso()}
            pull.reviews.append(review)
            added = [self._add_review_comment(pull, author, review_id=review["id"], **c) for c in comments]
            return review, added

    def _add_review_comment(self, pull: FakeIssue, author: str, *, path: str, line: int | None, body: str,
                            review_id: int | None = None, in_reply_to: int | None = None,
                            kind: str = "User") -> dict[str, Any]:
        self._comment_ids += 1
        comment = {"id": self._comment_ids, "login": author, "type": kind, "path": path, "line": line, "body": body,
                   "review_id": review_id, "in_reply_to": in_reply_to, "at": _now_iso()}
        pull.review_comments.append(comment)
        return comment

    def add_check_run(self, full_name: str, head_sha: str, name: str, *, conclusion: str | None = "failure",
                      title: str = "", summary: str = "",
                      annotations: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
        """A completed check run (conclusion None: in progress); annotations are {path, line, level, message}."""
        with self._lock:
            self._comment_ids += 1
            run = {"id": self._comment_ids, "head_sha": head_sha, "name": name, "conclusion": conclusion,
                   "title": title, "summary": summary, "annotations": list(annotations), "at": _now_iso()}
            self.repos[full_name].check_runs.append(run)
            return run

    def add_status(self, full_name: str, sha: str, context: str, state: str, *, description: str = "",
                   target_url: str | None = None) -> dict[str, Any]:
        """A commit status (state error, failure, pending or success); a later one of a context replaces it."""
        with self._lock:
            self._comment_ids += 1
            status = {"id": self._comment_ids, "sha": sha, "context": context, "state": state,
                      "description": description, "target_url": target_url, "at": _now_iso()}
            self.repos[full_name].statuses.append(status)
            return status

    def set_permission(self, full_name: str, username: str, role: str) -> None:
        """role: admin, maintain, write, triage, read or none."""
        self.repos[full_name].roles[username] = role

    def fail_next(self, method: str, path_regex: str, status: int, headers: dict[str, str] | None = None,
                  body: Any = None, *, times: int = 1, after_serving: bool = False,
                  before: Callable[[], None] | None = None) -> None:
        """Answer the next `times` matching requests with this status instead of serving them.

        after_serving: serve the request first and then answer with the error, as a proxy does when
        GitHub acted on a request but the answer was lost (the ambiguous 502).
        before: called as the failing request arrives, to look at the world at that moment.
        """
        body = body if body is not None else error_body(status, HTTPStatus(status).phrase)
        with self._lock:
            for _ in range(times):
                self._faults.append((method.upper(), re.compile(path_regex), Reply(status, body, headers),
                                     after_serving, before))

    # -- inspection ------------------------------------------------------------------------
    def issue(self, full_name: str, number: int) -> FakeIssue:
        return self.repos[full_name].issues[number]

    def pulls(self, full_name: str) -> list[FakeIssue]:
        return [i for i in self.repos[full_name].issues.values() if i.head is not None]

    def calls(self, method: str | None = None, path_regex: str = "") -> list[RecordedRequest]:
        return [r for r in self.requests
                if (method is None or r.method == method.upper()) and re.search(path_regex, r.path)]

    # -- request pipeline ------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers: Any, raw: bytes) -> tuple[int, dict[str, str], Any]:
        """Record, route, validate, apply faults, authorize, then serve one request."""
        parts = urlsplit(raw_path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        record = RecordedRequest(method, parts.path, query, {k.lower(): v for k, v in headers.items()},
                                 raw.decode(errors="replace") or None, time.time())
        with self._lock:
            self.requests.append(record)
        extra: dict[str, str] = {}
        try:
            op, params = self._route(method, parts.path)
            record.body = self._check_body(op, raw, method, parts.path)
            self._check_query(op, query, method, parts.path)
            self._fault(method, parts.path, after_serving=False)
            caller = self._authorize(op, headers.get("Authorization") or "")
            with self._lock:
                self._caller = caller
                status, payload, extra = self._handlers()[op.operation_id](params, query, record.body)
            self._fault(method, parts.path, after_serving=True)
        except Reply as reply:
            status, payload, extra = reply.status, reply.body, reply.headers
        record.status = status
        return status, {**self._rate_headers(), **{k.lower(): v for k, v in extra.items()}}, payload

    def _violation(self, text: str) -> None:
        with self._lock:
            self.violations.append(text)

    def _route(self, method: str, path: str) -> tuple[Operation, dict[str, str]]:
        for op in operations():
            match = op.pattern.match(path)
            if match and op.method == method:
                return op, {key: unquote(value) for key, value in match.groupdict().items()}
        self._violation(f"{method} {path}: no such operation in the OpenAPI subset")
        raise Reply(404, error_body(404, "Not Found"))

    def _check_body(self, op: Operation, raw: bytes, method: str, path: str) -> Any:
        if not raw.strip():
            if op.body_required:
                self._violation(f"{method} {path}: request body is required")
                raise Reply(422, error_body(422, "Invalid request.\n\nNo body was sent."))
            return None
        if op.body_schema is None:
            self._violation(f"{method} {path}: this operation takes no request body")
            return raw.decode(errors="replace")
        try:
            body = json.loads(raw)
        except ValueError:
            self._violation(f"{method} {path}: body is not JSON")
            raise Reply(400, error_body(400, "Problems parsing JSON")) from None
        problems = [e.message for e in jsonschema.Draft4Validator(op.body_schema).iter_errors(body)]
        if problems:
            self._violation(f"{method} {path}: " + "; ".join(problems))
            raise Reply(422, error_body(422, "Invalid request.\n\n" + "\n".join(problems)))
        return body

    def _check_query(self, op: Operation, query: dict[str, str], method: str, path: str) -> None:
        for name, schema in op.query.items():
            if name not in query:
                continue
            value: Any = query[name]
            if schema.get("type") == "integer":
                value = int(value) if value.lstrip("-").isdigit() else value
            problems = [e.message for e in jsonschema.Draft4Validator(schema).iter_errors(value)]
            if problems:
                self._violation(f"{method} {path}: query {name}: " + "; ".join(problems))
                raise Reply(422, error_body(422, f"Invalid value for query parameter {name}"))

    def _fault(self, method: str, path: str, *, after_serving: bool) -> None:
        with self._lock:
            found = next(((index, fault) for index, fault in enumerate(self._faults)
                          if fault[0] == method and fault[1].search(path) and fault[3] == after_serving), None)
            if found is None:
                return
            del self._faults[found[0]]
        reply, before = found[1][2], found[1][4]
        if before is not None:
            before()
        raise reply

    def _authorize(self, op: Operation, header: str) -> tuple[str, str]:
        """The caller's (login, type): a token's owner, or the app itself for a JWT."""
        scheme, _, credential = header.partition(" ")
        if op.operation_id == APP_TOKEN_OP:
            if scheme.lower() != "bearer":
                raise Reply(401, error_body(401, "A JSON web token could not be decoded"))
            self._check_jwt(credential)
            return APP_LOGIN, "Bot"
        if not header:
            raise Reply(401, error_body(401, "Requires authentication"))
        expires, login, kind = self._tokens.get(credential, (0.0, "", ""))
        if scheme.lower() not in ("token", "bearer") or expires < time.time():
            raise Reply(401, error_body(401, "Bad credentials"))
        return login, kind

    def _check_jwt(self, token: str) -> None:
        try:
            if self.app_public_key:
                claims = jwt.decode(token, self.app_public_key, algorithms=["RS256"], leeway=5)
            else:
                claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Reply(401, error_body(401, f"A JSON web token could not be decoded ({exc})")) from None
        if self.app_id is None or str(claims.get("iss")) != str(self.app_id):
            raise Reply(401, error_body(401, "'Issuer' claim ('iss') does not name a known GitHub App"))

    def _rate_headers(self) -> dict[str, str]:
        with self._lock:
            self._remaining = max(self._remaining - 1, 0)
            remaining = self._remaining
        return {"x-ratelimit-limit": "5000", "x-ratelimit-remaining": str(remaining),
                "x-ratelimit-used": str(5000 - remaining), "x-ratelimit-reset": str(int(time.time()) + 3600),
                "x-ratelimit-resource": "core", "x-github-api-version-selected": "2022-11-28",
                "x-github-request-id": secrets.token_hex(8).upper()}

    # -- operations ------------------------------------------------------------------------
    def _handlers(self) -> dict[str, Callable[..., tuple[int, Any, dict[str, str]]]]:
        return {
            APP_TOKEN_OP: self._create_token, "rate-limit/get": self._rate_limit, "repos/get": self._get_repo,
            "repos/get-collaborator-permission-level": self._permission,
            "reactions/create-for-issue-comment": self._react, "issues/get": self._get_issue,
            "reactions/create-for-pull-request-review-comment": self._react_to_review_comment,
            "issues/get-comment": self._get_comment, "issues/update-comment": self._update_comment,
            "issues/list-comments": self._list_comments, "issues/create-comment": self._create_comment,
            "issues/add-labels": self._add_labels, "issues/remove-label": self._remove_label,
            "pulls/list": self._list_pulls, "pulls/create": self._create_pull, "pulls/update": self._update_pull,
            "pulls/get": self._get_pull, GRAPHQL_OP: self._graphql,
            "pulls/list-reviews": self._list_reviews, "pulls/list-review-comments": self._list_review_comments,
            "pulls/create-reply-for-review-comment": self._reply_to_review_comment,
            "checks/list-for-ref": self._list_check_runs, "checks/list-annotations": self._list_annotations,
            "repos/get-combined-status-for-ref": self._combined_status,
        }

    def _repo(self, params: dict[str, str]) -> FakeRepo:
        repo = self.repos.get(f"{params['owner']}/{params['repo']}")
        if repo is None:
            raise Reply(404, error_body(404, "Not Found"))
        return repo

    def _issue(self, params: dict[str, str], key: str = "issue_number") -> tuple[FakeRepo, FakeIssue]:
        repo = self._repo(params)
        issue = repo.issues.get(int(params[key]))
        if issue is None or (key == "pull_number" and issue.head is None):
            raise Reply(404, error_body(404, "Not Found"))
        return repo, issue

    def _create_token(self, params: dict[str, str], query: dict[str, str], body: Any) -> tuple[int, Any, dict]:
        installation_id = int(params["installation_id"])
        if installation_id not in self.installations:
            raise Reply(404, error_body(404, "Not Found"))
        token, expires = f"ghs_{secrets.token_hex(18)}", time.time() + self.token_lifetime
        self._tokens[token] = (expires, APP_LOGIN, "Bot")
        self.minted.append({"installation_id": installation_id, "token": token, "expires_at": expires})
        data = self._example("installation-token")
        data.update(token=token, expires_at=_iso(expires), repository_selection="all")
        data.pop("repositories", None)
        if body and body.get("permissions"):
            data["permissions"] = body["permissions"]
        return 201, data, {}

    def _rate_limit(self, params: dict[str, str], query: dict[str, str], body: Any) -> tuple[int, Any, dict]:
        return 200, self._example("rate-limit-overview"), {}

    def _get_repo(self, params: dict[str, str], query: dict[str, str], body: Any) -> tuple[int, Any, dict]:
        return 200, self._repo_json(self._repo(params)), {}

    def _permission(self, params: dict[str, str], query: dict[str, str], body: Any) -> tuple[int, Any, dict]:
        role = self._repo(params).roles.get(params["username"], "none")
        data = self._example("repository-collaborator-permission-response-if-user-has-admin-permissions")
        data.update(permission=ROLE_TO_PERMISSION[role], role_name=role, user=self._user(params["username"]))
        return 200, data, {}

    def _find_comment(self, params: dict[str, str]) -> tuple[FakeRepo, FakeIssue, dict[str, Any]]:
        repo = self._repo(params)
        for issue in repo.issues.values():
            for comment in issue.comments:
                if str(comment["id"]) == params["comment_id"]:
                    return repo, issue, comment
        raise Reply(404, error_body(404, "Not Found"))

    def _get_comment(self, params: dict[str, str], query: dict[str, str], body: Any) -> tuple[int, Any, dict]:
        repo, issue, comment = self._find_comment(params)
        return 200, self._comment_json(repo, issue, comment), {}

    def _update_comment(self, params: dict[str, str], query: dict[str, str], body: Any) -> tuple[int, Any, dict]:
        repo, issue, comment = self._find_comment(params)
        comment.update(body=body["body"], edits=comment.get("edits", 0) + 1)
        return 200, self._comment_json(repo, issue, comment), {}

    def _react(self, params: dict[str, str], query: dict[str, str], body: Any) -> tuple[int, Any, dict]:
        _, _, comment = self._find_comment(params)
        comment.setdefault("reactions", []).append(body["content"])
        data = self._example("reaction")
        data.update(content=body["content"], created_at=_now_iso())
        return 201, data, {}

    def _react_to_review_comment(self, params: dict[str, str], query: dict[str, str],
                                 body: Any) -> tuple[int, Any, dict]:
        comment = next((c for issue in self._repo(params).issues.values() for c in issue.review_comments
                        if str(c["id"]) == params["comment_id"]), None)
        if comment is None:
            raise Reply(404, error_body(404, "Not Found"))
        comment.setdefault("reactions", []).append(body["content"])
        data = self._example("reaction")
        data.update(content=body["content"], created_at=_now_iso())
        return 201, data, {}

    def _get_issue(self, params: dict[str, str], query: dict[str, str], body: Any) -> tuple[int, Any, dict]:
        repo, issue = self._issue(params)
        return 200, self._issue_json(repo, issue), {}

    def _list_comments(self, params: dict[str, str], query: dict[str, str], body: Any) -> tuple[int, Any, dict]:
        repo, issue = self._issue(params)
        items = [self._comment_json(repo, issue, c) for c in issue.comments]
        return self._page(items, query, f"/repos/{repo.full_name}/issues/{issue.number}/comments")

    def _create_comment(self, params: dict[str, str], query: dict[str, str], body: Any) -> tuple[int, Any, dict]:
        repo, issue = self._issue(params)
        login, kind = self._caller
        comment = self.add_comment(repo.full_name, issue.number, body["body"], author=login, kind=kind)
        return 201, self._comment_json(repo, issue, comment), {}

    def _add_labels(self, params: dict[str, str], query: dict[str, str], body: Any) -> tuple[int, Any, dict]:
        repo, issue = self._issue(params)
        items = body.get("labels", []) if isinstance(body, dict) else body or []
        for item in items:
            name = item["name"] if isinstance(item, dict) else item
            if name not in issue.labels:
                issue.labels.append(name)
        return 200, [self._label(repo, name) for name in issue.labels], {}

    def _remove_label(self, params: dict[str, str], query: dict[str, str], body: Any) -> tuple[int, Any, dict]:
        repo, issue = self._issue(params)
        if params["name"] not in issue.labels:
            raise Reply(404, error_body(404, "Label does not exist"))
        issue.labels.remove(params["name"])
        return 200, [self._label(repo, name) for name in issue.labels], {}

    def _list_pulls(self, params: dict[str, str], query: dict[str, str], body: Any) -> tuple[int, Any, dict]:
        repo = self._repo(params)
        state, head = query.get("state", "open"), query.get("head")
        found = [i for i in repo.issues.values() if i.head is not None and state in ("all", i.state)
                 and (head is None or head in (f"{i.head_owner}:{i.head}", i.head))
                 and query.get("base") in (None, i.base)]
        items = [self._pull_json(repo, i, simple=True) for i in found]
        return self._page(items, query, f"/repos/{repo.full_name}/pulls")

    def _create_pull(self, params: dict[str, str], query: dict[str, str], body: Any) -> tuple[int, Any, dict]:
        repo = self._repo(params)
        owner, _, branch = body["head"].rpartition(":")
        owner = owner or repo.owner
        if not body.get("title"):
            raise Reply(422, _validation("PullRequest", "title", "missing_field"))
        if any(i.head == branch and i.head_owner == owner and i.state == "open" for i in repo.issues.values()):
            raise Reply(422, _validation("PullRequest", "head", "custom",
                                         f"A pull request already exists for {owner}:{branch}."))
        number = max(repo.issues, default=0) + 1
        issue = FakeIssue(number, body["title"], body.get("body"), self._caller[0], head=branch,
                          head_owner=owner, base=body["base"], draft=bool(body.get("draft", False)))
        repo.issues[number] = issue
        return 201, self._pull_json(repo, issue), {}

    def _update_pull(self, params: dict[str, str], query: dict[str, str], body: Any) -> tuple[int, Any, dict]:
        repo, issue = self._issue(params, "pull_number")
        body = body or {}
        issue.title = body.get("title", issue.title)
        issue.body = body.get("body", issue.body)
        issue.state = body.get("state", issue.state)
        issue.base = body.get("base", issue.base)
        return 200, self._pull_json(repo, issue), {}

    def _get_pull(self, params: dict[str, str], query: dict[str, str], body: Any) -> tuple[int, Any, dict]:
        repo, issue = self._issue(params, "pull_number")
        return 200, self._pull_json(repo, issue), {}

    def _list_reviews(self, params: dict[str, str], query: dict[str, str], body: Any) -> tuple[int, Any, dict]:
        repo, pull = self._issue(params, "pull_number")
        items = []
        for review in pull.reviews:
            data = copy.deepcopy(self._example("pull-request-review-items", repo.full_name, pull.number)[0])
            data.update(id=review["id"], body=review["body"], state=review["state"], user=self._user(review["login"]),
                        submitted_at=review["at"], node_id=f"PRR_{review['id']}")
            items.append(data)
        return self._page(items, query, f"/repos/{repo.full_name}/pulls/{pull.number}/reviews")

    def _list_review_comments(self, params: dict[str, str], query: dict[str, str],
                              body: Any) -> tuple[int, Any, dict]:
        repo, pull = self._issue(params, "pull_number")
        items = [self._review_comment_json(repo, pull, c) for c in pull.review_comments]
        return self._page(items, query, f"/repos/{repo.full_name}/pulls/{pull.number}/comments")

    def _reply_to_review_comment(self, params: dict[str, str], query: dict[str, str],
                                 body: Any) -> tuple[int, Any, dict]:
        """GitHub answers 404 for a reply to a comment that is not a top-level comment of this pull request."""
        repo, pull = self._issue(params, "pull_number")
        parent = next((c for c in pull.review_comments if str(c["id"]) == params["comment_id"]), None)
        if parent is None or parent["in_reply_to"] is not None:
            raise Reply(404, error_body(404, "Not Found"))
        login, kind = self._caller
        comment = self._add_review_comment(pull, login, path=parent["path"], line=parent["line"], body=body["body"],
                                           review_id=None, in_reply_to=parent["id"], kind=kind)
        return 201, self._review_comment_json(repo, pull, comment), {}

    def _review_comment_json(self, repo: FakeRepo, pull: FakeIssue, comment: dict[str, Any]) -> dict[str, Any]:
        data = copy.deepcopy(self._example("pull-request-review-comment", repo.full_name, pull.number))
        data.update(id=comment["id"], body=comment["body"], path=comment["path"], line=comment["line"],
                    original_line=comment["line"], pull_request_review_id=comment["review_id"],
                    in_reply_to_id=comment["in_reply_to"], user=self._user(comment["login"], comment["type"]),
                    created_at=comment["at"], updated_at=comment["at"], node_id=f"PRRC_{comment['id']}",
                    url=f"{self.api_url}/repos/{repo.full_name}/pulls/comments/{comment['id']}")
        return data

    def _list_check_runs(self, params: dict[str, str], query: dict[str, str], body: Any) -> tuple[int, Any, dict]:
        """The ref's check runs, newest first; filter=latest (the default) keeps the newest of each name."""
        repo = self._repo(params)
        found = [run for run in reversed(repo.check_runs) if run["head_sha"] == params["ref"]
                 and query.get("check_name") in (None, run["name"])
                 and query.get("status") in (None, "completed" if run["conclusion"] else "in_progress")]
        if query.get("filter", "latest") == "latest":
            seen: set[str] = set()
            found = [run for run in found if not (run["name"] in seen or seen.add(run["name"]))]
        status, items, headers = self._page([self._check_run_json(repo, run) for run in found], query,
                                            f"/repos/{repo.full_name}/commits/{params['ref']}/check-runs")
        return status, {"total_count": len(found), "check_runs": items}, headers

    def _list_annotations(self, params: dict[str, str], query: dict[str, str], body: Any) -> tuple[int, Any, dict]:
        repo = self._repo(params)
        run = next((r for r in repo.check_runs if str(r["id"]) == params["check_run_id"]), None)
        if run is None:
            raise Reply(404, error_body(404, "Not Found"))
        template = self._example("check-annotation-items", repo.full_name)[0]
        items = [{**template, "path": note["path"], "start_line": note.get("line") or 1,
                  "end_line": note.get("line") or 1, "start_column": None, "end_column": None,
                  "annotation_level": note.get("level", "failure"), "title": note.get("title"),
                  "message": note["message"], "raw_details": None,
                  "blob_href": f"{self.web_url}/{repo.full_name}/blob/{run['head_sha']}/{note['path']}"}
                 for note in run["annotations"]]
        return self._page(items, query, f"/repos/{repo.full_name}/check-runs/{run['id']}/annotations")

    def _combined_status(self, params: dict[str, str], query: dict[str, str], body: Any) -> tuple[int, Any, dict]:
        """GitHub's rule: failure if any context failed or errored, pending if any is pending or none exist."""
        repo = self._repo(params)
        latest: dict[str, dict[str, Any]] = {}
        for status in repo.statuses:
            if status["sha"] == params["ref"]:
                latest[status["context"]] = status
        states = {status["state"] for status in latest.values()}
        state = ("failure" if states & {"failure", "error"} else "pending" if not states or "pending" in states
                 else "success")
        data = self._example("combined-commit-status", repo.full_name)
        template = data["statuses"][0]
        data.update(state=state, sha=params["ref"], total_count=len(latest), repository=self._repo_json(repo),
                    commit_url=f"{self.api_url}/repos/{repo.full_name}/commits/{params['ref']}",
                    url=f"{self.api_url}/repos/{repo.full_name}/commits/{params['ref']}/status",
                    statuses=[{**template, "id": s["id"], "node_id": f"SC_{s['id']}", "state": s["state"],
                               "context": s["context"], "description": s["description"] or None,
                               "target_url": s["target_url"], "created_at": s["at"], "updated_at": s["at"],
                               "url": f"{self.api_url}/repos/{repo.full_name}/statuses/{s['sha']}"}
                              for s in latest.values()])
        return 200, data, {}

    def _check_run_json(self, repo: FakeRepo, run: dict[str, Any]) -> dict[str, Any]:
        data = copy.deepcopy(self._example("check-run-paginated", repo.full_name)["check_runs"][0])
        done = run["conclusion"] is not None
        data.update(id=run["id"], head_sha=run["head_sha"], node_id=f"CR_{run['id']}", name=run["name"],
                    status="completed" if done else "in_progress", conclusion=run["conclusion"],
                    started_at=run["at"], completed_at=run["at"] if done else None, pull_requests=[],
                    url=f"{self.api_url}/repos/{repo.full_name}/check-runs/{run['id']}",
                    html_url=f"{self.web_url}/{repo.full_name}/runs/{run['id']}")
        data["output"] = {"title": run["title"] or None, "summary": run["summary"] or None, "text": None,
                          "annotations_count": len(run["annotations"]),
                          "annotations_url": f"{data['url']}/annotations"}
        return data

    def _graphql(self, params: dict[str, str], query: dict[str, str], body: Any) -> tuple[int, Any, dict]:
        """markPullRequestReadyForReview only; GraphQL reports errors with status 200, as GitHub does."""
        if f"{READY_MUTATION}(input: $input)" not in body["query"]:
            self._violation(f"POST /graphql: only {READY_MUTATION} is served, got {body['query'][:200]!r}")
            return 200, {"errors": [{"message": "the fake serves only markPullRequestReadyForReview"}]}, {}
        mutation_input = (body.get("variables") or {}).get("input") or {}
        node_id = mutation_input.get("pullRequestId")
        found = [issue for repo in self.repos.values() for issue in repo.issues.values()
                 if issue.head is not None and self._node_id(repo, issue) == node_id]
        if not found:
            return 200, {"data": {READY_MUTATION: None}, "errors": [
                {"type": "NOT_FOUND", "path": [READY_MUTATION],
                 "message": f"Could not resolve to a node with the global id of '{node_id}'"}]}, {}
        found[0].draft = False
        return 200, {"data": {READY_MUTATION: {"clientMutationId": mutation_input.get("clientMutationId"),
                                               "pullRequest": {"isDraft": False}}}}, {}

    @staticmethod
    def _node_id(repo: FakeRepo, issue: FakeIssue) -> str:
        return "PR_kw" + hashlib.sha1(f"{repo.full_name}#{issue.number}".encode()).hexdigest()[:16]

    # -- response bodies from GitHub's examples ----------------------------------------------
    def _page(self, items: list[Any], query: dict[str, str], path: str) -> tuple[int, Any, dict[str, str]]:
        per_page, page = min(int(query.get("per_page", 30)), 100), int(query.get("page", 1))
        last = max(1, math.ceil(len(items) / per_page))
        links = [(n, rel) for n, rel in ((page + 1, "next"), (last, "last")) if page < last]
        link = ", ".join(f'<{self.api_url}{path}?{urlencode({**query, "per_page": per_page, "page": n})}>; '
                         f'rel="{rel}"' for n, rel in links)
        return 200, items[(page - 1) * per_page: page * per_page], ({"Link": link} if link else {})

    def _example(self, name: str, full_name: str = "octocat/Hello-World", number: int | None = None) -> Any:
        text = (self._examples[name].replace("https://api.github.com", self.api_url)
                .replace("https://github.com", self.web_url).replace("octocat/Hello-World", full_name))
        if number is not None:
            text = text.replace("/1347", f"/{number}")
        return json.loads(text)

    def _user(self, login: str, kind: str = "User") -> dict[str, Any]:
        user = json.loads(json.dumps(self._example("issue")["user"]).replace("octocat", login))
        user.update(login=login, id=zlib.crc32(login.encode()), type=kind)
        return user

    def _label(self, repo: FakeRepo, name: str) -> dict[str, Any]:
        label = copy.deepcopy(self._example("label-items", repo.full_name)[0])
        label.update(name=name, id=zlib.crc32(name.encode()),
                     url=f"{self.api_url}/repos/{repo.full_name}/labels/{name}",
                     description="", default=False)
        return label

    def _repo_json(self, repo: FakeRepo) -> dict[str, Any]:
        data = self._example("full-repository-default-response", repo.full_name)
        for key in ("template_repository", "parent", "source", "organization"):
            data.pop(key, None)
        data.update(id=zlib.crc32(repo.full_name.encode()), name=repo.full_name.split("/")[1],
                    full_name=repo.full_name, owner=self._user(repo.owner), private=repo.private,
                    default_branch=repo.default_branch, fork=False)
        return data

    def _issue_json(self, repo: FakeRepo, issue: FakeIssue) -> dict[str, Any]:
        data = self._example("issue", repo.full_name, issue.number)
        data.update(id=issue.number, number=issue.number, title=issue.title, body=issue.body, state=issue.state,
                    user=self._user(issue.author), labels=[self._label(repo, n) for n in issue.labels],
                    comments=len(issue.comments), assignee=None, assignees=[], milestone=None,
                    closed_by=None, pinned_comment=None, locked=False)
        if issue.head is None:
            data.pop("pull_request", None)
        return data

    def _comment_json(self, repo: FakeRepo, issue: FakeIssue, comment: dict[str, Any]) -> dict[str, Any]:
        data = self._example("issue-comment", repo.full_name, issue.number)
        data.update(id=comment["id"], body=comment["body"], user=self._user(comment["login"], comment["type"]),
                    created_at=comment["at"], updated_at=comment["at"],
                    url=f"{self.api_url}/repos/{repo.full_name}/issues/comments/{comment['id']}",
                    html_url=f"{self.web_url}/{repo.full_name}/issues/{issue.number}#issuecomment-{comment['id']}")
        return data

    def _pull_json(self, repo: FakeRepo, issue: FakeIssue, *, simple: bool = False) -> dict[str, Any]:
        if simple:
            data = self._example("pull-request-simple-items", repo.full_name, issue.number)[0]
        else:
            data = self._example("pull-request", repo.full_name, issue.number)
            data.update(merged=False, mergeable=True, mergeable_state="clean", merged_by=None,
                        comments=len(issue.comments))
        data.update(id=issue.number, number=issue.number, state=issue.state, title=issue.title, body=issue.body,
                    draft=issue.draft, user=self._user(issue.author), node_id=self._node_id(repo, issue),
                    labels=[self._label(repo, n) for n in issue.labels],
                    milestone=None, assignee=None, assignees=[], requested_reviewers=[], requested_teams=[],
                    locked=False, merged_at=None, auto_merge=None)
        sha = hashlib.sha1(f"{repo.full_name}:{issue.head}".encode()).hexdigest()
        head_sha = issue.head_sha or (self.branch_head(repo.full_name, issue.head or "") if self.branch_head else None)
        for side, ref, owner in (("head", issue.head, issue.head_owner), ("base", issue.base, repo.owner)):
            data[side].update(ref=ref, label=f"{owner}:{ref}", sha=(head_sha if side == "head" else None) or sha,
                              user=self._user(owner), repo=self._repo_json(repo))
        return data


def _validation(resource: str, field_name: str, code: str, message: str | None = None) -> dict[str, Any]:
    """GitHub's validation-error shape."""
    error = {"resource": resource, "field": field_name, "code": code}
    if message:
        error["message"] = message
    return {"message": "Validation Failed", "errors": [error], "documentation_url": DOCS, "status": "422"}


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_iso() -> str:
    return _iso(time.time())
