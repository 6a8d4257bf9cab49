"""What the model is told: the shared rules, the specialty's stance, and the task's context."""

from __future__ import annotations

import os
from pathlib import Path

from common.forge.base import IssueInfo
from common.specialties import SpecialtyProfile
from workers.repo_files import RepoFileRefused, read_text

SYSTEM_TEMPLATE = """\
You are forgecrew's {specialty} agent. You work alone in a checkout of the repository {repo} on \
the branch {branch}, and your change becomes a pull request that a person will review.

{stance}

How to work:
- Read before you write: find the relevant code with list_files, search and read_file.
- Change files with edit_file (exact replacement) or write_file. Keep the change focused on the issue.
- Run the tests and any quick checks with run_command; a failing command's output is information, not an error.
- Do not commit, push or create branches: forgecrew commits your working tree and opens the pull request.
- Every path is relative to the repository root; you cannot leave it, and the network may be unavailable.
- When the change is complete, call finish with a short Markdown summary for the pull request: what changed, \
why, and what a reviewer should check. If the issue cannot be resolved, call finish and explain why."""

PLAN_SYSTEM_TEMPLATE = """\
You are forgecrew's {specialty} agent, planning a change to the repository {repo}. A person with write \
access reads your plan and approves it or asks for changes; only then does the change itself begin.

{stance}

How to plan:
- Read the code that matters with list_files, search and read_file. In this run you can only read: \
nothing you do changes the repository, and no command runs.
- Every path is relative to the repository root; you cannot leave it.
- When you know what to do, call finish with the plan as Markdown: the files to change and what changes in \
each, the tests to add or update, and any question or risk the person should weigh. Keep it short enough to \
read in a minute. If the issue cannot be resolved, say why in the plan."""

TREE_LIMIT = 300
README_LIMIT = 6_000


def system_prompt(profile: SpecialtyProfile, *, repo: str, branch: str, planning: bool = False) -> str:
    """The change's rules, or with `planning` a read-only run whose finish summary is the plan."""
    stance = profile.system_prompt or "Make the smallest correct change."
    if planning:
        return PLAN_SYSTEM_TEMPLATE.format(specialty=profile.name, repo=repo, stance=stance)
    return SYSTEM_TEMPLATE.format(specialty=profile.name, repo=repo, branch=branch, stance=stance)


def file_tree(checkout: Path, limit: int = TREE_LIMIT) -> str:
    """Paths under the checkout (no .git, no dependency folders), trimmed to `limit` lines."""
    skip = {".git", "node_modules", ".venv", "venv", "__pycache__", "dist", "build", "target", ".tox"}
    paths: list[str] = []
    for root, dirs, files in os.walk(checkout):
        dirs[:] = sorted(d for d in dirs if d not in skip)
        relative = Path(root).relative_to(checkout)
        paths.extend(str(relative / name) if str(relative) != "." else name for name in sorted(files))
        if len(paths) > limit:
            break
    shown = paths[:limit]
    more = f"\n… and more files (tree trimmed at {limit})" if len(paths) > limit else ""
    return "\n".join(shown) + more


def readme(checkout: Path) -> str:
    """The README's start, read as untrusted input (no links followed, never more than README_LIMIT)."""
    for name in ("README.md", "README.rst", "README.txt", "README"):
        try:
            text = read_text(checkout, name, limit=README_LIMIT, truncate=True)
        except RepoFileRefused:
            continue
        if text is not None:
            return text
    return ""


def task_message(issue: IssueInfo, checkout: Path, *, instructions: dict[str, str], extra: str,
                 test_command: str | None, approved_plan: str | None = None, workflow: str = "") -> str:
    """The first user message: the issue, the repository, and the plan a person approved, if any.

    `workflow`: a workflow step's section (workflow_section): its place and the earlier steps' work.
    """
    parts = _context(issue, checkout, instructions=instructions, extra=extra)
    if workflow:
        parts.append(workflow)
    if test_command:
        parts.append(f"## Tests\nforgecrew will run `{test_command}` after you finish; a failure comes back to you.")
    if approved_plan:
        parts.append("## Approved plan\nA person with write access approved this plan; carry it out.\n\n"
                     + approved_plan.strip())
    parts.append("Resolve the issue, then call finish.")
    return "\n\n".join(parts)


def workflow_section(*, position: int, specialties: list[str], previous: list[tuple[str, str, str | None,
                     tuple[str, ...]]], log: str) -> str:
    """Where this step stands in its workflow and what the steps before it did, on the same branch.

    `previous`: (specialty, summary, commit, files) of each earlier step; `log`: git log of the branch.
    """
    total, me = len(specialties), specialties[position]
    lines = [f"## Workflow: you are step {position + 1} of {total} ({me})",
             "This issue is shared by several specialties, each in turn on one branch and one pull request: "
             + " → ".join(specialties) + f". Do the {me} part of the issue; leave the other specialties' parts "
             "to their steps" + (", and build on what the earlier steps did." if previous else ".")]
    for index, (specialty, summary, commit, files) in enumerate(previous):
        listed = ", ".join(f"`{path}`" for path in files[:30]) or "none"
        head = f"### Step {index + 1} ({specialty})" + (f", commit {commit[:12]}" if commit else ", no change")
        lines += ["", head, summary.strip() or "(no summary)", f"Files changed: {listed}"]
    if log:
        lines += ["", "### The branch so far (git log)", "```", log[:6000], "```"]
    return "\n".join(lines)


def plan_message(issue: IssueInfo, checkout: Path, *, instructions: dict[str, str], extra: str,
                 previous_plan: str | None = None, changes: str | None = None) -> str:
    """A planning run's first message; a revision carries the plan it revises and what to change in it."""
    parts = _context(issue, checkout, instructions=instructions, extra=extra)
    if previous_plan:
        parts.append("## Your previous plan\n" + previous_plan.strip())
    if changes:
        parts.append("## Changes requested to the plan (by a person with write access)\n" + changes.strip())
    parts.append("Write the revised plan, then call finish with it." if previous_plan
                 else "Plan the change (read only, change nothing), then call finish with the plan.")
    return "\n\n".join(parts)


def _context(issue: IssueInfo, checkout: Path, *, instructions: dict[str, str], extra: str) -> list[str]:
    """What both kinds of run read first: the issue, its writers' comments, the files and instructions."""
    parts = [f"# Issue #{issue.number}: {issue.title}" if issue.number else f"# Task: {issue.title}",
             issue.body.strip() or "(no description)"]
    if issue.comments or issue.comments_left_out:
        shown = "\n\n".join(f"{comment.author}: {comment.body}" for comment in issue.comments)
        note = (f"({issue.comments_left_out} comment(s) by people without write access to the repository "
                "were left out.)") if issue.comments_left_out else ""
        parts.append("## Comments on the issue (from people with write access)\n" + "\n\n".join(
            part for part in (shown, note) if part))
    parts.append("## Repository files\n```\n" + file_tree(checkout) + "\n```")
    text = readme(checkout)
    if text:
        parts.append("## README (start)\n" + text)
    for name, content in instructions.items():
        parts.append(f"## Instructions from {name}\n{content}")
    if extra.strip():
        parts.append("## Instructions from .forgecrew.yml\n" + extra.strip())
    return parts


def repair_message(headline: str, output: str, round_number: int, rounds: int) -> str:
    return (f"The tests failed after your change (repair round {round_number} of {rounds}): {headline}\n\n"
            f"```\n{output}\n```\n\nFix the cause, run the tests yourself, then call finish again.")
