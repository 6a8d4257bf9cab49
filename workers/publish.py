"""Turn a finished workspace into a branch, a pull request and a note on the issue."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from common.forge.base import Forge, ForgeError, PullRequestInfo, PushRejected
from common.gitsafe import run_git
from common.redact import Redactor
from common.settings import Settings
from common.specialties import TESTS_FAILING_LABEL
from workers.llm import Usage
from workers.testrun import TestResult
from workers.change import build_change
from workers.workspace import Workspace
from workers.workflow import StepRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishRequest:
    repo: str
    issue_number: int | None
    title: str
    summary: str
    tests: TestResult | None
    usage: Usage
    cost_usd: float | None
    model: str
    # a workflow's last step: every step (this one included, as done) for the body, and this step's trailer
    steps: tuple[StepRecord, ...] = ()
    commit_trailer: str = ""

    @property
    def tests_fail(self) -> bool:
        return self.tests is not None and not self.tests.passed


@dataclass(frozen=True)
class Published:
    """The pull request, and the steps after it that failed: recorded, never a failed task."""

    pr: PullRequestInfo
    problems: tuple[str, ...] = ()


class NothingToPublish(Exception):
    """The agent changed no file; there is nothing to open a PR for."""


def pr_title(request: PublishRequest) -> str:
    prefix = f"Fix #{request.issue_number}: " if request.issue_number else ""
    return (prefix + request.title)[:250]


def pr_body(request: PublishRequest, files: list[str], notes: Sequence[str] = ()) -> str:
    """`notes`: lines after the summary and files, e.g. workers/overlap.pr_section's other PRs."""
    lines = []
    if request.issue_number:
        lines.append(f"Fixes #{request.issue_number}\n")
    summary = request.summary.strip() or "(no summary)"
    if request.steps:  # each step's own summary is under Steps
        summary = (f"{len(request.steps)} specialties worked on this in turn, on this one branch: "
                   + " → ".join(step.specialty for step in request.steps) + ". What each did is under Steps.")
    lines += ["## Summary", summary, "", "## Files changed"]
    lines += [f"- `{path}`" for path in files[:100]] + ([f"- … and {len(files) - 100} more"] if len(files) > 100 else [])
    if request.steps:
        lines += ["", *steps_section(request.steps)]
    lines += ["", *notes, "## Tests"]
    if request.tests is None:
        lines.append("No test command found (set `test_command` in `.forgecrew.yml`).")
    else:
        lines.append(("✅ " if request.tests.passed else "❌ ") + request.tests.headline())
        if not request.tests.passed:
            lines += ["", "<details><summary>Output (end)</summary>", "", "```",
                      request.tests.output[-3000:], "```", "</details>"]
    usage = request.usage
    cost = f"${request.cost_usd:.4f}" if request.cost_usd is not None else "not priced"
    if request.steps:  # every step's, not only the last one's
        priced = [step.cost_usd for step in request.steps if step.cost_usd is not None]
        total = f"${sum(priced):.4f}" if priced else "not priced"
        lines += ["", "---", f"forgecrew · model `{request.model}` · {len(request.steps)} steps · tokens in "
                  f"{sum(s.input_tokens for s in request.steps)}, out {sum(s.output_tokens for s in request.steps)} "
                  f"· cost {total}"]
        return "\n".join(lines)
    lines += ["", "---", f"forgecrew · model `{request.model}` · tokens in {usage.input_tokens}, out "
              f"{usage.output_tokens}, cache read {usage.cache_read_tokens}, cache write "
              f"{usage.cache_write_tokens} · cost {cost}"]
    return "\n".join(lines)


def steps_section(steps: tuple[StepRecord, ...]) -> list[str]:
    """A workflow's steps in the PR body: who did what, its tests, tokens and cost."""
    lines = [f"## Steps ({len(steps)} specialties, one branch)", "",
             "| # | specialty | commit | tests | tokens in / out | cost |", "| --- | --- | --- | --- | --- | --- |"]
    for step in steps:
        verdict = ("✅ " if step.tests_passed else "❌ " if step.tests_passed is False else "") + (step.tests or "–")
        cost = f"${step.cost_usd:.4f}" if step.cost_usd is not None else "not priced"
        commit = f"`{step.commit_sha[:12]}`" if step.commit_sha else "no change"
        lines.append(f"| {step.position + 1} | {step.specialty} | {commit} | {verdict.replace('|', '/')} | "
                     f"{step.input_tokens} / {step.output_tokens} | {cost} |")
    for step in steps:
        lines += ["", f"### {step.position + 1}. {step.specialty}", step.summary.strip() or "(no summary)"]
    return lines


def tests_failing_advice(tests: TestResult, branch: str) -> str:
    """What a person can do about a draft whose tests fail: the task stays pr_open, not failed."""
    return (f"The tests still fail ({tests.headline()}), so the pull request is a draft labelled "
            f"`{TESTS_FAILING_LABEL}`. To finish it, push a fix to `{branch}`, or add the `forgecrew` label "
            "to the issue again to let forgecrew try once more (it updates this pull request).")


def publish(forge: Forge, settings: Settings, workspace: Workspace, request: PublishRequest,
            redact: Redactor, *, fence: Callable[[], None],
            before_push: Callable[[list[str]], Sequence[str]] | None = None) -> Published:
    """Build the worker's own commit of the checkout, push it, and open or update the PR for the branch.

    `fence` raises LeaseLost when this worker no longer holds the task, so a fenced-out worker
    neither pushes nor touches the pull request. `before_push(files)` sees the changed files first: it
    returns lines for the PR body, or raises to push nothing (workers/overlap.OverlapSerialized).
    """
    message = f"{pr_title(request)}\n\n" + (f"Fixes #{request.issue_number}\n" if request.issue_number else "")
    if request.commit_trailer:
        message += f"\n{redact(request.summary).strip()[:2000]}\n\n{request.commit_trailer}\n"
    change = build_change(workspace, message, author=(settings.bot_name, settings.bot_email),
                          contains_secret=redact.contains)
    if change is None and request.steps and workspace.remote_branch_sha and \
            workspace.remote_branch_sha != workspace.base_sha:
        # a workflow's last step that changed nothing itself: the PR is the earlier steps' commits
        files = _branch_files(workspace)
        notes = before_push(files) if before_push is not None else ()
    else:
        if change is None:
            raise NothingToPublish("the agent made no changes to the repository")
        files = change.files
        refuse_others_commits(workspace, change.git_dir, settings.bot_email)
        notes = before_push(files) if before_push is not None else ()
        fence()
        forge.push_branch(request.repo, source=change.git_dir, commit=change.commit, branch=workspace.branch,
                          expected=workspace.remote_branch_sha)
        workspace.record_push(change.commit)
        if request.steps:  # the last step's own commit, known only now
            request = replace(request, steps=(*request.steps[:-1], replace(request.steps[-1],
                                                                           commit_sha=change.commit)))
    fence()
    pr = forge.open_or_update_pr(
        request.repo, branch=workspace.branch, base=workspace.base_branch, title=redact(pr_title(request)),
        body=redact(pr_body(request, files, notes)), draft=request.tests_fail,
    )
    return _after_opening(forge, request, pr)


def _branch_files(workspace: Workspace) -> list[str]:
    git_dir = workspace.mirror or workspace.checkout / ".git"
    done = run_git(["--git-dir", str(git_dir), "diff", "--name-only", "-z", "--no-renames", workspace.base_sha,
                    workspace.remote_branch_sha or workspace.head_sha])
    return sorted(name for name in done.stdout.split("\0") if name) if done.returncode == 0 else []


def refuse_others_commits(workspace: Workspace, git_dir: Path, bot_email: str) -> None:
    """A run replaces the branch with its own commit: fine over forgecrew's earlier attempts, never over a person's.

    The branch as it was when the run cloned it (the push's lease) is read in the worker's own git
    directory, which borrows the mirror's objects: never in the checkout the agent could rewrite.
    """
    if not workspace.remote_branch_sha:
        return
    since = [f"^{workspace.base_sha}"] if workspace.base_sha else []
    done = run_git(["--git-dir", str(git_dir), "log", "--format=%h %ae %ce", workspace.remote_branch_sha, *since])
    others = ([line.split()[0] for line in done.stdout.splitlines()
               if any(email != bot_email for email in line.split()[1:])] if done.returncode == 0 else ["?"])
    if others:
        listed = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise PushRejected(f"push of {workspace.branch} to {workspace.repo} refused: the branch already exists with "
                           f"commits forgecrew did not make ({listed}); forgecrew never forces over other people's "
                           "commits: rename or delete that branch, then retry")


def _after_opening(forge: Forge, request: PublishRequest, pr: PullRequestInfo) -> Published:
    """Label the PR and take it out of draft when its tests pass; the PR exists, so failures only note."""
    problems: list[str] = []
    verb = "add" if request.tests_fail else "remove"
    _best_effort(problems, f"could not {verb} the {TESTS_FAILING_LABEL} label on the pull request",
                 lambda: forge.label_pull_request(request.repo, pr.number, TESTS_FAILING_LABEL, request.tests_fail))
    if pr.draft and not request.tests_fail and _best_effort(
            problems, "could not mark the draft pull request ready for review",
            lambda: forge.mark_ready_for_review(request.repo, pr.number)):
        pr = replace(pr, draft=False)
    return Published(pr, tuple(problems))


def _best_effort(problems: list[str], what: str, call: Callable[[], None]) -> bool:
    try:
        call()
    except ForgeError as exc:
        log.warning("%s: %s", what, exc)
        problems.append(f"{what}: {exc}")
        return False
    return True
