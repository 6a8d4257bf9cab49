"""What the pipeline needs from a forge; `github` and `local` adapters implement it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from pathlib import Path

from common.errors import ForgecrewError
from common.gitsafe import GitCredential
from common.specialties import StatusLabel


class ForgeError(ForgecrewError):
    """A forge call failed in a way a person must look at (permissions, missing repo, ...)."""


class CommentGone(ForgeError):
    """The comment to edit no longer exists (a person deleted it)."""


class PushRejected(ForgeError):
    """The forge refused the branch push (protected branch, missing permission, conflict)."""


@dataclass(frozen=True)
class IssueComment:
    author: str
    body: str


@dataclass(frozen=True)
class IssueInfo:
    repo: str  # owner/name
    number: int
    title: str
    body: str
    author: str = ""
    labels: tuple[str, ...] = ()
    comments: tuple[IssueComment, ...] = ()  # oldest first, bots' own comments left out
    url: str = ""
    comments_left_out: int = 0  # comments not shown to the model (their authors lack write access)
    state: str = "open"  # or "closed": a blocker of "depends on #N" that closed releases its dependents


@dataclass(frozen=True)
class PullRequestInfo:
    number: int
    url: str
    branch: str
    draft: bool
    created: bool  # False when an existing PR for the branch was updated
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReviewNote:
    """A review's verdict and body, or one review comment on a line of a file (path and line set)."""

    id: int
    author: str
    body: str
    state: str = ""  # a review's: CHANGES_REQUESTED, COMMENTED, APPROVED
    path: str = ""
    line: int | None = None
    review_id: int | None = None
    in_reply_to: int | None = None


@dataclass(frozen=True)
class PullFeedback:
    """What people said on a pull request: its reviews and its review comments, oldest first."""

    reviews: tuple[ReviewNote, ...] = ()
    comments: tuple[ReviewNote, ...] = ()


@dataclass(frozen=True)
class CheckAnnotation:
    """One line a check run pointed at (checks/list-annotations): where, how bad, what it said."""

    path: str
    line: int | None
    level: str  # notice, warning, failure
    message: str
    title: str = ""


@dataclass(frozen=True)
class FailingCheck:
    """A check run or commit status of a commit that did not pass."""

    name: str  # a check run's name, or a commit status's context
    conclusion: str  # failure, timed_out, action_required; a status's failure or error
    kind: str = "check run"  # or "status"
    title: str = ""
    summary: str = ""  # a check run's output summary, or a status's description
    url: str = ""
    annotations: tuple[CheckAnnotation, ...] = ()


# What counts as a failed check run, and as a failed commit status (success, neutral, skipped, pending do not).
FAILED_CONCLUSIONS = frozenset({"failure", "timed_out", "action_required"})
FAILED_STATES = frozenset({"failure", "error"})
MAX_CHECKS = 20  # failing checks read per commit
MAX_ANNOTATIONS = 30  # annotations read per check run


class Forge(Protocol):
    """Each method is idempotent where the pipeline may repeat it (retries, redeliveries)."""

    name: str

    def clone_url(self, repo: str) -> str:
        """URL git clones and pushes with; never contains a credential."""
        ...

    def git_credential(self, repo: str) -> GitCredential | None:
        """What git needs to fetch `repo` (None: nothing), handed to git only through a file descriptor."""
        ...

    def push_branch(self, repo: str, *, source: Path, commit: str, branch: str, expected: str | None) -> None:
        """Point `branch` at `commit` (from the git directory `source`) if it is still at `expected`.

        `expected` None means the branch must not exist yet. Raises PushRejected otherwise. The
        forge runs nothing that a repository could have planted (hooks, config commands).
        """
        ...

    def default_branch(self, repo: str) -> str: ...

    def get_issue(self, repo: str, number: int) -> IssueInfo: ...

    def has_write_access(self, repo: str, username: str) -> bool: ...

    def comment(self, repo: str, number: int, body: str) -> int:
        """Post a comment on issue or PR `number`; its id, to edit it later."""
        ...

    def edit_comment(self, repo: str, number: int, comment_id: int, body: str) -> None:
        """Replace the body of comment `comment_id`; CommentGone when it was deleted."""
        ...

    def react(self, repo: str, number: int, comment_id: int, content: str, *, review_comment: bool = False) -> None:
        """Put a reaction (eyes, +1, confused, ...) on a comment of issue or PR `number`: an acknowledgement.

        `review_comment`: the comment is one on a line of pull request `number`'s diff.
        """
        ...

    def set_status_label(self, repo: str, number: int, label: StatusLabel) -> None:
        """Add `label` and remove forgecrew's other status labels."""
        ...

    def label_pull_request(self, repo: str, number: int, label: str, present: bool) -> None:
        """Add or remove one label on a pull request (e.g. forgecrew:tests-failing)."""
        ...

    def open_or_update_pr(
        self, repo: str, *, branch: str, base: str, title: str, body: str, draft: bool
    ) -> PullRequestInfo:
        """Open a PR for `branch`, or update the one already open for it (never a second one)."""
        ...

    def mark_ready_for_review(self, repo: str, number: int) -> None:
        """Take a draft PR out of draft (a later run's tests pass); a PR already ready stays so."""
        ...

    def pull_feedback(self, repo: str, number: int) -> PullFeedback:
        """The reviews and review comments of pull request `number` (pulls/list-reviews, list-review-comments)."""
        ...

    def reply_to_review_comment(self, repo: str, number: int, comment_id: int, body: str) -> None:
        """Answer review comment `comment_id` in its own thread (pulls/create-reply-for-review-comment)."""
        ...

    def pull_head_sha(self, repo: str, number: int) -> str:
        """The commit pull request `number`'s head is at now (pulls/get): CI results of older ones are stale."""
        ...

    def pull_state(self, repo: str, number: int) -> str:
        """"open", "closed" or "merged" (pulls/get): how a missed webhook's merge is found after all."""
        ...

    def failing_checks(self, repo: str, sha: str) -> tuple[FailingCheck, ...]:
        """Commit `sha`'s failed check runs with their annotations, then its failed commit statuses.

        At most MAX_CHECKS of them and MAX_ANNOTATIONS annotations each (checks/list-for-ref,
        checks/list-annotations, repos/get-combined-status-for-ref); a forge without CI has none.
        """
        ...
