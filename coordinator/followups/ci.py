"""Deciding a `ci` follow-up: is the failing commit still the PR's head, is the cap reached, what failed.

No person asked for it, so there is no write-access check; instead the forge must say that the
commit is the PR's head now (an older commit's failure is stale, and a fork's commit never is the
head of forgecrew's PR). The failing checks are read here, at decide time, and stored as the
follow-up's instructions: the worker needs no extra forge calls, and the row shows what the agent
was given. Past MAX_CI_FIXES_PER_PR started fixes forgecrew says once on the PR that a person is needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import func, select

from common.db import Database
from common.forge.base import FailingCheck, Forge, ForgeError
from common.models import Followup

log = logging.getLogger(__name__)

CI = "ci"
STARTED = ("running", "done", "failed")
CAP_MARK = "MAX_CI_FIXES_PER_PR"  # in the reply of the follow-up whose refusal was said on the PR
REPORT_LIMIT = 12_000  # characters of check output given to the agent
SUMMARY_LIMIT = 1_500  # per check's summary


@dataclass(frozen=True)
class CiDecision:
    state: str  # pending or refused
    outcome: str  # the delivery's recorded outcome
    reply: str | None = None
    instructions: str | None = None  # the failing checks, for the worker
    comment: str | None = None  # to post on the PR


def decide_ci(db: Database, forge: Forge, followup_id: int, *, repo: str, number: int, sha: str) -> CiDecision:
    """Stale, over the cap, unreadable, nothing failing any more, or pending with the failing checks.

    A ForgeError reading the PR's head propagates (the sweep decides again); one reading the checks
    refuses, since PyGithub has already retried what was transient.
    """
    head = forge.pull_head_sha(repo, number)
    if head != sha:
        why = f"commit {sha[:12]} is no longer the head of #{number} ({head[:12]} is)"
        return CiDecision("refused", f"ignored: {why}", reply=why)
    limit = db.settings.max_ci_fixes_per_pr
    if limit == 0:
        return CiDecision("refused", f"refused: CI fixes are off ({CAP_MARK}=0)", reply="CI fixes are off")
    if fixes_started(db, followup_id) >= limit:
        text = (f"The CI of this pull request still fails after {limit} fix attempt(s) by forgecrew "
                f"({CAP_MARK}); a person is needed from here.")
        said = cap_said(db, followup_id)
        return CiDecision("refused", f"refused: over {limit} CI fixes" + (" (already said on the PR)" if said else ""),
                          reply=text if not said else f"over {limit} CI fixes; already said on the PR",
                          comment=None if said else text)
    try:
        checks = forge.failing_checks(repo, sha)
    except ForgeError as exc:  # e.g. a fine-grained token, which GitHub never grants Checks: say so, do not loop
        log.warning("ci follow-up %s: the checks of %s@%s are not readable: %s", followup_id, repo, sha[:12], exc)
        return CiDecision("refused", f"refused: the checks of {sha[:12]} are not readable", reply=str(exc)[:1000])
    if not checks:
        why = f"no check or status of {sha[:12]} fails any more"
        return CiDecision("refused", f"ignored: {why}", reply=why)
    return CiDecision("pending", f"follow-up {followup_id} pending: {len(checks)} failing check(s)",
                      instructions=ci_report(sha, checks))


def fixes_started(db: Database, followup_id: int) -> int:
    """CI fixes of this task that ran, run or wait to run (other kinds have their own cap)."""
    with db.session() as session:
        row = session.get(Followup, followup_id)
        assert row is not None
        return int(session.scalar(select(func.count()).select_from(Followup).where(
            Followup.task_id == row.task_id, Followup.kind == CI, Followup.id != row.id,
            Followup.state.in_((*STARTED, "pending")))) or 0)


def cap_said(db: Database, followup_id: int) -> bool:
    """An earlier CI fix of this task was refused for the cap, and that was said on the PR."""
    with db.session() as session:
        row = session.get(Followup, followup_id)
        assert row is not None
        return bool(session.scalar(select(func.count()).select_from(Followup).where(
            Followup.task_id == row.task_id, Followup.kind == CI, Followup.id < row.id,
            Followup.state == "refused", Followup.reply.contains(CAP_MARK))))


def ci_report(sha: str, checks: tuple[FailingCheck, ...]) -> str:
    """The failing checks as plain text, bounded: names, conclusions, output and annotations."""
    parts = [f"Commit {sha}: {len(checks)} failing check(s)."]
    for check in checks:
        lines = [f"### {check.kind} `{check.name}`: {check.conclusion}"]
        if check.title:
            lines.append(f"Title: {check.title}")
        if check.summary:
            lines.append("Summary: " + _trim(check.summary, SUMMARY_LIMIT))
        if check.url:
            lines.append(f"Details: {check.url}")
        for note in check.annotations:
            where = note.path + (f":{note.line}" if note.line is not None else "")
            title = f" {note.title}:" if note.title else ""
            lines.append(f"- {where} [{note.level or 'failure'}]{title} {_trim(note.message, 500)}")
        parts.append("\n".join(lines))
    return _trim("\n\n".join(parts), REPORT_LIMIT)


def _trim(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + f" … (trimmed at {limit} characters)"
