"""Labels and comments on the issue: courtesies to people that never stop a run."""

from __future__ import annotations

import logging

from common.forge.base import Forge, ForgeError
from common.redact import Redactor
from common.specialties import StatusLabel

log = logging.getLogger(__name__)


class IssueNotes:
    """Each call returns None, or what went wrong so the caller can record it."""

    def __init__(self, forge: Forge | None, redact: Redactor, repo: str, issue_number: int | None) -> None:
        self.forge = forge
        self.redact = redact
        self.repo = repo
        self.number = issue_number

    def label(self, label: StatusLabel) -> str | None:
        if self.number is None or self.forge is None:
            return None
        try:
            self.forge.set_status_label(self.repo, self.number, label)
        except ForgeError as exc:
            log.warning("%s#%s: could not set label %s: %s", self.repo, self.number, label.value, exc)
            return f"could not set the issue label {label.value}: {exc}"
        return None

    def comment(self, body: str) -> str | None:
        if self.number is None or self.forge is None:
            return None
        try:
            self.forge.comment(self.repo, self.number, self.redact(body))
        except ForgeError as exc:
            log.warning("%s#%s: could not comment: %s", self.repo, self.number, exc)
            return f"could not comment on the issue: {exc}"
        return None
