"""Turn a finished workspace into a branch, a pull request and a note on the issue."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from common.forge.base import Forge, PullRequestInfo
from common.redact import Redactor
from common.settings import Settings
from common.specialties import TESTS_FAILING_LABEL
from workers.llm import Usage
from workers.testrun import TestResult
from workers.workspace import Workspace, changed_files, commit_all, push


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


class NothingToPublish(Exception):
    """The agent changed no file; there is nothing to open a PR for."""


def pr_title(request: PublishRequest) -> str:
    prefix = f"Fix #{request.issue_number}: " if request.issue_number else ""
    return (prefix + request.title)[:250]


def pr_body(request: PublishRequest, files: list[str]) -> str:
    lines = []
    if request.issue_number:
        lines.append(f"Fixes #{request.issue_number}\n")
    lines += ["## Summary", request.summary.strip() or "(no summary)", "", "## Files changed"]
    lines += [f"- `{path}`" for path in files[:100]] + ([f"- … and {len(files) - 100} more"] if len(files) > 100 else [])
    lines += ["", "## Tests"]
    if request.tests is None:
        lines.append("No test command found (set `test_command` in `.forgecrew.yml`).")
    else:
        lines.append(("✅ " if request.tests.passed else "❌ ") + request.tests.headline())
        if not request.tests.passed:
            lines += ["", "<details><summary>Output (end)</summary>", "", "```",
                      request.tests.output[-3000:], "```", "</details>"]
    usage = request.usage
    cost = f"${request.cost_usd:.4f}" if request.cost_usd is not None else "not priced"
    lines += ["", "---", f"forgecrew · model `{request.model}` · tokens in {usage.input_tokens}, out "
              f"{usage.output_tokens}, cache read {usage.cache_read_tokens}, cache write "
              f"{usage.cache_write_tokens} · cost {cost}"]
    return "\n".join(lines)


def publish(forge: Forge, settings: Settings, workspace: Workspace, request: PublishRequest,
            redact: Redactor, *, fence: Callable[[], None]) -> PullRequestInfo:
    """Commit, push (credentials fresh from the forge) and open or update the PR for the branch.

    `fence` raises LeaseLost when this worker no longer holds the task, so a fenced-out worker
    neither pushes nor touches the pull request.
    """
    files = changed_files(workspace)
    message = f"{pr_title(request)}\n\n" + (f"Fixes #{request.issue_number}\n" if request.issue_number else "")
    sha = commit_all(workspace, message, settings.bot_name, settings.bot_email)
    if sha is None or not files:
        raise NothingToPublish("the agent made no changes to the repository")
    fence()
    push(workspace, forge.git_env(request.repo))
    fence()
    failing = request.tests is not None and not request.tests.passed
    pr = forge.open_or_update_pr(
        request.repo, branch=workspace.branch, base=workspace.base_branch, title=redact(pr_title(request)),
        body=redact(pr_body(request, files)), draft=failing,
    )
    forge.label_pull_request(request.repo, pr.number, TESTS_FAILING_LABEL, failing)
    return pr
