"""GitHub adapter of the forge port, on PyGithub; git gets the token only through a credential helper's fd."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests
from github import Auth, Github, GithubException, GithubIntegration, GithubRetry
from github.CheckRun import CheckRun
from github.GithubException import BadCredentialsException, RateLimitExceededException
from github.PullRequest import PullRequest
from github.Repository import Repository

from common.errors import SettingsError
from common.forge.base import (FAILED_CONCLUSIONS, FAILED_STATES, MAX_ANNOTATIONS, MAX_CHECKS, CheckAnnotation,
                               CommentGone, FailingCheck, ForgeError, IssueComment, IssueInfo, PullFeedback,
                               PullRequestInfo, PushRejected, ReviewNote)
from common.gitsafe import GitCredential, run_git
from common.settings import Settings
from common.specialties import StatusLabel

log = logging.getLogger(__name__)

TOKEN_REFRESH_MARGIN = 600.0  # installation tokens live one hour; mint anew with ten minutes left
WRITE_PERMISSIONS = frozenset({"admin", "maintain", "write"})
RETRIED_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PATCH", "PUT", "DELETE"})
# POST creates things (comments above all). After a 500/502/504 or a read timeout GitHub may have
# created it and only the answer was lost, so a repeat could post it twice. A POST is repeated only
# when GitHub said it did not act: a rate limit (403/429; GithubRetry checks the 403 is one) or a
# 503 with Retry-After. Connection errors before the request was sent are retried for every method
# (urllib3's connect retries do not look at the method).
POST_REFUSED_STATUS = frozenset({403, 429})


class _RateLimitRetry(GithubRetry):
    """GithubRetry that also waits out x-ratelimit-reset on 403/429 and lets tests inject the sleep."""

    def __init__(self, *, sleeper: Callable[[float], None] = time.sleep, repeat_posts: bool = False,
                 **kwargs: Any) -> None:
        self.sleeper = sleeper
        self.repeat_posts = repeat_posts
        super().__init__(**kwargs)

    def new(self, **kw: Any) -> _RateLimitRetry:
        kw["sleeper"] = self.sleeper
        kw["repeat_posts"] = self.repeat_posts
        return super().new(**kw)  # type: ignore[return-value]

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if method.upper() == "POST" and not self.repeat_posts:
            return status_code in POST_REFUSED_STATUS or (status_code == 503 and has_retry_after)
        return super().is_retry(method, status_code, has_retry_after)

    def get_retry_after(self, response: Any) -> float | None:
        hinted = super().get_retry_after(response)
        headers = response.headers
        if hinted is not None or headers.get("X-RateLimit-Remaining") != "0":
            return hinted
        reset = headers.get("X-RateLimit-Reset", "")
        if not reset.isdigit():
            return None
        wait = max(int(reset) - time.time(), 0.0) + 1.0
        cap = self.max_rate_limit_wait
        return None if cap is not None and wait > cap else wait

    def sleep_for_retry(self, response: Any) -> bool:
        seconds = self.get_retry_after(response)
        if seconds:
            self.sleeper(seconds)
            return True
        return False

    def _sleep_backoff(self) -> None:
        backoff = self.get_backoff_time()
        if backoff > 0:
            self.sleeper(backoff)


def _make_retry(secondary_rate_wait: float, max_rate_limit_wait: float,
                sleep: Callable[[float], None], *, repeat_posts: bool = False) -> _RateLimitRetry:
    """Retries for 5xx, secondary limits (retry-after) and primary limits (x-ratelimit-reset)."""
    return _RateLimitRetry(
        sleeper=sleep,
        repeat_posts=repeat_posts,
        total=5,
        backoff_factor=1.0,
        backoff_max=30.0,
        status_forcelist=[429, *range(500, 600)],
        allowed_methods=RETRIED_METHODS | ({"POST"} if repeat_posts else set()),
        raise_on_status=False,  # the last answer reaches PyGithub, which raises a typed error
        secondary_rate_wait=secondary_rate_wait,
        max_rate_limit_wait=max_rate_limit_wait,
        retry_after_max=int(max_rate_limit_wait),
    )


def load_private_key(value: str) -> str:
    """The App key may be PEM text (env var, maybe with literal \\n) or a path to a PEM file."""
    if "-----BEGIN" in value:
        return value.replace("\\n", "\n")
    path = Path(value.strip()).expanduser()
    if value.strip() and path.is_file():
        return path.read_text()
    raise SettingsError("FORGECREW_GITHUB_APP_PRIVATE_KEY is neither PEM text nor the path of a readable file")


class InstallationTokens:
    """Installation tokens of one App installation, minted again when less than ten minutes remain."""

    def __init__(self, integration: GithubIntegration, installation_id: int,
                 *, margin: float = TOKEN_REFRESH_MARGIN) -> None:
        self.installation_id = installation_id
        self._integration = integration
        self._margin = margin
        self._lock = threading.Lock()
        self._token = ""
        self._expires_at = 0.0
        self.seen: set[str] = set()  # every token handed out, so messages can be scrubbed of them

    def current(self) -> str:
        """A token valid for at least `margin` seconds (installation tokens expire after an hour)."""
        with self._lock:
            if not self._token or self._expires_at - time.time() < self._margin:
                self._mint()
            return self._token

    def _mint(self) -> None:
        try:
            grant = self._integration.get_access_token(self.installation_id)
        except GithubException as exc:
            raise ForgeError(
                f"could not mint a token for GitHub App installation {self.installation_id} "
                f"({exc.status}: {_detail(exc.data)}): check FORGECREW_GITHUB_APP_ID, the private key, "
                "and that the app is still installed"
            ) from exc
        except (ValueError, jwt.PyJWTError) as exc:  # the key could not sign a JWT
            raise SettingsError("FORGECREW_GITHUB_APP_PRIVATE_KEY is not a usable RSA private key") from exc
        expires = grant.expires_at
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=timezone.utc)
        self._token, self._expires_at = grant.token, expires.timestamp()
        self.seen.add(grant.token)
        log.info("minted a token for installation %s, valid until %s", self.installation_id, expires.isoformat())


class _TokenAuth(Auth.Auth):
    """PyGithub auth that asks for the token on every request, so a long task never sends a stale one."""

    def __init__(self, fetch: Callable[[], str]) -> None:
        self._fetch = fetch

    @property
    def token_type(self) -> str:
        return "token"

    @property
    def token(self) -> str:
        return self._fetch()

    @property
    def _masked_token(self) -> str:
        return "token (removed)"


def _detail(data: Any) -> str:
    """GitHub's error message plus the messages of its `errors` list, on one line."""
    if not isinstance(data, dict):
        return str(data or "no details")
    parts = [str(data.get("message") or "no message")]
    for error in data.get("errors") or []:
        if isinstance(error, dict):
            parts.append(str(error.get("message") or error.get("code") or error))
        else:
            parts.append(str(error))
    return "; ".join(parts)


def _describe(exc: GithubException, action: str, repo: str, not_found: str | None) -> str:
    """An actionable sentence for a failed GitHub call."""
    status, detail = exc.status, _detail(exc.data)
    if isinstance(exc, RateLimitExceededException) or status == 429:
        reset = (exc.headers or {}).get("x-ratelimit-reset") or (exc.headers or {}).get("X-RateLimit-Reset")
        when = datetime.fromtimestamp(int(reset), timezone.utc).strftime("%H:%M:%S UTC") if reset else "soon"
        return f"GitHub rate limit hit while {action} in {repo} ({detail}); it resets at {when}: retry later"
    if isinstance(exc, BadCredentialsException) or status == 401:
        return (f"GitHub rejected forgecrew's credentials while {action} in {repo} (401): check "
                "FORGECREW_GITHUB_TOKEN, or FORGECREW_GITHUB_APP_ID and FORGECREW_GITHUB_APP_PRIVATE_KEY")
    if status == 404:
        return not_found or f"repository {repo} not found or the token cannot see it (while {action})"
    if status == 403:
        return f"GitHub refused {action} in {repo} (403: {detail}): give the token or app that permission"
    if status == 422:
        return f"GitHub rejected {action} in {repo} (422: {detail})"
    return f"GitHub failed {action} in {repo} ({status}: {detail}); try again later"


def web_base(api_url: str) -> str:
    """https://api.github.com -> https://github.com; https://ghe.example/api/v3 -> https://ghe.example."""
    parts = urlsplit(api_url.rstrip("/"))
    host = parts.netloc[4:] if parts.netloc.startswith("api.") else parts.netloc
    path = parts.path[: -len("/api/v3")] if parts.path.endswith("/api/v3") else parts.path
    return f"{parts.scheme}://{host}{path}"


def split_repo(repo: str) -> tuple[str, str]:
    """owner/name -> (owner, name), refusing anything else before it reaches a URL."""
    owner, _, name = repo.partition("/")
    if not owner or not name or "/" in name:
        raise ForgeError(f"repository must be written owner/name, got {repo!r}")
    return owner, name


def _push_refusal_hint(said: str) -> str:
    """What a person can do about a refused push, before git's own words (the first line people read)."""
    if "stale info" in said or "fetch first" in said or "non-fast-forward" in said:
        return (" because someone else pushed to the branch while forgecrew worked; forgecrew never forces over "
                "other people's commits: merge or delete that branch, then retry")
    if "protected branch" in said.lower():
        return (" because the branch is protected: exempt forgecrew/* branches from the protection rule (or let "
                "forgecrew's token bypass it), then retry")
    return ""


class GitHubForge:
    """The forge port on GitHub (or GHES) through PyGithub, with a token or as a GitHub App."""

    name = "github"

    def __init__(self, settings: Settings, installation_id: int | None = None, *,
                 write_interval: float = 1.0, read_interval: float = 0.0,
                 secondary_rate_wait: float = 60.0, max_rate_limit_wait: float = 900.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.api_url = settings.github_api_url.rstrip("/")
        self._options: dict[str, Any] = dict(
            write_interval=write_interval, read_interval=read_interval,
            secondary_rate_wait=secondary_rate_wait, max_rate_limit_wait=max_rate_limit_wait, sleep=sleep)
        self._static_token = settings.secret("github_token")
        self._tokens = self._installation_tokens(installation_id or settings.github_app_installation_id)
        if not self._static_token and not settings.github_app_id:
            raise SettingsError("FORGECREW_GITHUB_TOKEN, or FORGECREW_GITHUB_APP_ID and "
                                "FORGECREW_GITHUB_APP_PRIVATE_KEY, must be set to use the GitHub forge")
        self._client_lock = threading.Lock()
        self._client: Github | None = None

    def for_installation(self, installation_id: int) -> GitHubForge:
        """The same forge acting as the App installation a webhook came from."""
        return GitHubForge(self.settings, installation_id, **self._options)

    def _client_kwargs(self, *, repeat_posts: bool = False) -> dict[str, Any]:
        options = self._options
        return dict(
            base_url=self.api_url,
            retry=_make_retry(options["secondary_rate_wait"], options["max_rate_limit_wait"], options["sleep"],
                              repeat_posts=repeat_posts),
            seconds_between_requests=options["read_interval"] or None,
            seconds_between_writes=options["write_interval"] or None,
        )

    def _installation_tokens(self, installation_id: int | None) -> InstallationTokens | None:
        settings = self.settings
        if installation_id is None or not settings.github_app_id:
            return None
        if not settings.github_app_private_key:
            raise SettingsError("FORGECREW_GITHUB_APP_PRIVATE_KEY must be set with FORGECREW_GITHUB_APP_ID")
        key = load_private_key(settings.secret("github_app_private_key"))
        # its only POST mints an installation token: a repeat just makes a spare token
        integration = GithubIntegration(auth=Auth.AppAuth(settings.github_app_id, key),
                                        **self._client_kwargs(repeat_posts=True))
        return InstallationTokens(integration, installation_id)

    def token(self) -> str:
        """The credential for the next call or push: a fresh installation token, or the static token."""
        if self._tokens is not None:
            return self._tokens.current()
        if self._static_token:
            return self._static_token
        raise ForgeError("GitHub App auth needs an installation: webhooks carry theirs; for other work set "
                         "FORGECREW_GITHUB_APP_INSTALLATION_ID (or use FORGECREW_GITHUB_TOKEN)")

    def _gh(self) -> Github:
        with self._client_lock:
            if self._client is None:
                self._client = Github(auth=_TokenAuth(self.token), lazy=True, **self._client_kwargs())
            return self._client

    def _repo(self, repo: str) -> Repository:
        split_repo(repo)
        return self._gh().get_repo(repo)

    def _scrub(self, text: str) -> str:
        secrets = {self._static_token} | (self._tokens.seen if self._tokens else set())
        for secret in filter(None, secrets):
            text = text.replace(secret, "***")
        return text

    @contextmanager
    def _errors(self, action: str, repo: str, *, not_found: str | None = None) -> Iterator[None]:
        """Turn PyGithub and network failures into ForgeError sentences without credentials."""
        try:
            yield
        except GithubException as exc:
            raise ForgeError(self._scrub(_describe(exc, action, repo, not_found))) from exc
        except requests.RequestException as exc:
            message = f"cannot reach the GitHub API at {self.api_url} while {action} in {repo} ({type(exc).__name__})"
            raise ForgeError(self._scrub(message)) from exc

    def clone_url(self, repo: str) -> str:
        """clone_url_template if set, else the web host that serves the API; never with a credential."""
        owner, name = split_repo(repo)
        template = self.settings.clone_url_template
        if template:
            url = template.format(full_name=repo, owner=owner, name=name)
        else:
            url = f"{web_base(self.api_url)}/{repo}.git"
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and parts.password is not None:
            raise SettingsError("FORGECREW_CLONE_URL_TEMPLATE must not contain a credential; forgecrew adds one")
        return url

    def git_credential(self, repo: str) -> GitCredential | None:
        """The token (fresh for an App) for the clone host only; None for a file:// mirror."""
        parts = urlsplit(self.clone_url(repo))
        if parts.scheme not in ("http", "https"):
            return None
        return GitCredential(f"{parts.scheme}://{parts.netloc}", "x-access-token", self.token())

    def push_branch(self, repo: str, *, source: Path, commit: str, branch: str, expected: str | None) -> None:
        """`git push --force-with-lease` of the worker's own commit; no hook runs on our side."""
        ref = f"refs/heads/{branch}"
        credential = self.git_credential(repo)
        url = self.clone_url(repo)
        done = run_git(["--git-dir", str(source), "push", "--quiet", "--no-verify",
                        f"--force-with-lease={ref}:{expected or ''}", url, f"{commit}:{ref}"], credential=credential)
        if done.returncode != 0:
            said = self._scrub(done.stderr.strip())
            raise PushRejected(f"push of {branch} to {repo} was rejected{_push_refusal_hint(said)}: {said}")

    def default_branch(self, repo: str) -> str:
        with self._errors("reading the repository", repo,
                          not_found=f"repository {repo} not found or the token cannot see it"):
            return self._repo(repo).default_branch

    def get_issue(self, repo: str, number: int) -> IssueInfo:
        with self._errors(f"reading issue #{number}", repo, not_found=self._missing_issue(repo, number)):
            issue = self._repo(repo).get_issue(number)
            comments = tuple(IssueComment(c.user.login, c.body or "") for c in issue.get_comments()
                             if c.user is not None and not self._is_bot(c.user.login, c.user.type))
            return IssueInfo(
                repo=repo, number=number, title=issue.title, body=issue.body or "",
                author=issue.user.login if issue.user else "",
                labels=tuple(label.name for label in issue.labels), comments=comments, url=issue.html_url,
                state=issue.state or "open",
            )

    def _is_bot(self, login: str, kind: str | None) -> bool:
        return kind == "Bot" or login.endswith("[bot]") or login == self.settings.bot_name

    @staticmethod
    def _missing_issue(repo: str, number: int) -> str:
        return f"issue #{number} not found in {repo}, or repository {repo} not found or the token cannot see it"

    def has_write_access(self, repo: str, username: str) -> bool:
        """admin, maintain and write may command forgecrew; an unknown user may not."""
        with self._errors(f"checking {username}'s permission", repo):
            try:
                permission = self._repo(repo).get_collaborator_permission(username)
            except GithubException as exc:
                if exc.status != 404:
                    raise
                log.warning("permission check of %s on %s answered 404; treating as no access", username, repo)
                return False
        return permission in WRITE_PERMISSIONS

    def comment(self, repo: str, number: int, body: str) -> int:
        with self._errors(f"commenting on #{number}", repo, not_found=self._missing_issue(repo, number)):
            return int(self._repo(repo).get_issue(number).create_comment(body).id)

    def edit_comment(self, repo: str, number: int, comment_id: int, body: str) -> None:
        try:
            with self._errors(f"editing comment {comment_id} on #{number}", repo):
                self._repo(repo).get_issue(number).get_comment(comment_id).edit(body)
        except ForgeError as exc:
            if isinstance(exc.__cause__, GithubException) and exc.__cause__.status == 404:
                raise CommentGone(f"comment {comment_id} on {repo}#{number} was deleted") from exc
            raise

    def react(self, repo: str, number: int, comment_id: int, content: str, *, review_comment: bool = False) -> None:
        with self._errors(f"reacting to comment {comment_id} on #{number}", repo,
                          not_found=f"comment {comment_id} on #{number} of {repo} not found"):
            if review_comment:  # one request: PyGithub would first fetch the pull request and the comment
                split_repo(repo)
                self._gh().requester.requestJsonAndCheck(
                    "POST", f"/repos/{repo}/pulls/comments/{comment_id}/reactions", input={"content": content})
                return
            self._repo(repo).get_issue(number).get_comment(comment_id).create_reaction(content)

    def set_status_label(self, repo: str, number: int, label: StatusLabel) -> None:
        """Add `label` first, then drop the other status labels the issue carries (404 = already gone)."""
        with self._errors(f"labelling #{number}", repo, not_found=self._missing_issue(repo, number)):
            issue = self._repo(repo).get_issue(number)
            present = {item.name for item in issue.labels}
            if label.value not in present:
                issue.add_to_labels(label.value)
            for other in StatusLabel:
                if other is not label and other.value in present:
                    try:
                        issue.remove_from_labels(other.value)
                    except GithubException as exc:  # "Label does not exist": someone removed it first
                        if exc.status != 404:
                            raise
                        log.debug("label %s was already gone from %s#%s", other.value, repo, number)

    def label_pull_request(self, repo: str, number: int, label: str, present: bool) -> None:
        """PRs are issues to the labels API; a label already in the wanted state costs no write."""
        with self._errors(f"labelling pull request #{number}", repo):
            issue = self._repo(repo).get_issue(number)
            has = label in {item.name for item in issue.labels}
            if present and not has:
                issue.add_to_labels(label)
            elif has and not present:
                issue.remove_from_labels(label)

    def open_or_update_pr(self, repo: str, *, branch: str, base: str, title: str, body: str,
                          draft: bool) -> PullRequestInfo:
        """Update the open PR of `branch` if there is one (draft state then stays as it is), else open it."""
        with self._errors(f"opening a pull request for {branch}", repo):
            gh_repo = self._repo(repo)
            existing = self._open_pr(gh_repo, repo, branch)
            if existing is None:
                try:
                    pull = gh_repo.create_pull(base=base, head=branch, title=title, body=body, draft=draft)
                    return self._pr_info(pull, branch, created=True)
                except GithubException as exc:
                    # 422: another run opened it first; 5xx (not repeated): ours may exist, its answer lost
                    existing = self._open_pr(gh_repo, repo, branch) if exc.status == 422 or exc.status >= 500 else None
                    if existing is None:
                        raise
                    if exc.status >= 500:
                        return self._pr_info(existing, branch, created=True)
            if existing.base.ref != base:
                existing.edit(title=title, body=body, base=base)
            else:
                existing.edit(title=title, body=body)
            return self._pr_info(existing, branch, created=False)

    def mark_ready_for_review(self, repo: str, number: int) -> None:
        """REST cannot un-draft a PR; PyGithub sends GraphQL's markPullRequestReadyForReview."""
        with self._errors(f"marking pull request #{number} ready for review", repo):
            pull = self._repo(repo).get_pull(number)
            if pull.draft:
                pull.mark_ready_for_review()

    def pull_feedback(self, repo: str, number: int) -> PullFeedback:
        """Bots' reviews and comments (forgecrew's own replies among them) are left out."""
        with self._errors(f"reading the reviews of pull request #{number}", repo,
                          not_found=f"pull request #{number} not found in {repo}"):
            pull = self._repo(repo).get_pull(number)
            reviews = tuple(
                ReviewNote(id=r.id, author=r.user.login, body=r.body or "", state=r.state or "")
                for r in pull.get_reviews() if r.user is not None and not self._is_bot(r.user.login, r.user.type))
            comments = tuple(
                ReviewNote(id=c.id, author=c.user.login, body=c.body or "", path=c.path or "",
                           line=c.line if c.line is not None else c.original_line,
                           review_id=c.pull_request_review_id, in_reply_to=c.in_reply_to_id)
                for c in pull.get_review_comments()
                if c.user is not None and not self._is_bot(c.user.login, c.user.type))
        return PullFeedback(reviews, comments)

    def reply_to_review_comment(self, repo: str, number: int, comment_id: int, body: str) -> None:
        with self._errors(f"replying to review comment {comment_id} on #{number}", repo,
                          not_found=f"review comment {comment_id} on #{number} of {repo} not found"):
            self._repo(repo).get_pull(number).create_review_comment_reply(comment_id, body)

    def pull_head_sha(self, repo: str, number: int) -> str:
        with self._errors(f"reading pull request #{number}", repo,
                          not_found=f"pull request #{number} not found in {repo}"):
            return str(self._repo(repo).get_pull(number).head.sha)

    def pull_state(self, repo: str, number: int) -> str:
        with self._errors(f"reading pull request #{number}", repo,
                          not_found=f"pull request #{number} not found in {repo}"):
            pull = self._repo(repo).get_pull(number)
            return "merged" if pull.merged else str(pull.state)

    def failing_checks(self, repo: str, sha: str) -> tuple[FailingCheck, ...]:
        """The latest run of each check (GitHub's default filter) and the combined status, failed ones only."""
        with self._errors(f"reading the checks of commit {sha[:12]}", repo,
                          not_found=f"commit {sha[:12]} not found in {repo}"):
            commit = self._repo(repo).get_commit(sha)  # lazy: no request of its own
            found: list[FailingCheck] = []
            for run in commit.get_check_runs():
                if len(found) >= MAX_CHECKS:
                    break
                if run.conclusion in FAILED_CONCLUSIONS:
                    found.append(self._failing_run(run))
            for status in commit.get_combined_status().statuses:
                if len(found) < MAX_CHECKS and status.state in FAILED_STATES:
                    found.append(FailingCheck(name=status.context or "status", conclusion=status.state,
                                              kind="status", summary=status.description or "",
                                              url=status.target_url or ""))
        return tuple(found)

    @staticmethod
    def _failing_run(run: CheckRun) -> FailingCheck:
        output = run.output
        notes = []
        if output is not None and output.annotations_count:
            for note in islice(run.get_annotations(), MAX_ANNOTATIONS):
                notes.append(CheckAnnotation(path=note.path or "", line=note.start_line,
                                             level=note.annotation_level or "", message=note.message or "",
                                             title=note.title or ""))
        return FailingCheck(name=run.name, conclusion=run.conclusion, title=(output.title if output else None) or "",
                            summary=(output.summary if output else None) or "", url=run.html_url or "",
                            annotations=tuple(notes))

    @staticmethod
    def _open_pr(gh_repo: Repository, repo: str, branch: str) -> PullRequest | None:
        owner, _ = split_repo(repo)
        return next(iter(gh_repo.get_pulls(state="open", head=f"{owner}:{branch}")), None)

    @staticmethod
    def _pr_info(pull: PullRequest, branch: str, *, created: bool) -> PullRequestInfo:
        return PullRequestInfo(number=pull.number, url=pull.html_url, branch=branch,
                               draft=bool(pull.draft), created=created)
