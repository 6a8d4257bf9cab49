"""Keep secrets out of transcripts, PR bodies, comments and logs, whatever path they took."""

from __future__ import annotations

import re

from common.settings import Settings

SECRET_FIELDS = ("webhook_secret", "api_token", "github_token", "github_app_private_key", "anthropic_api_key")
# token shapes worth hiding even when we did not configure them ourselves
TOKEN_PATTERNS = re.compile(
    r"(gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|sk-ant-[A-Za-z0-9_-]{10,}|x-access-token:[^@\s]+)"
)
REDACTED = "[redacted]"


class Redactor:
    def __init__(self, secrets: list[str]) -> None:
        # longest first, so a secret that contains another is replaced whole
        self.secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    @classmethod
    def from_settings(cls, settings: Settings, extra: list[str] | None = None) -> Redactor:
        values = [settings.secret(name) for name in SECRET_FIELDS]
        return cls([*values, *(extra or [])])

    def add(self, secret: str) -> None:
        if secret and len(secret) >= 6 and secret not in self.secrets:
            self.secrets = sorted([*self.secrets, secret], key=len, reverse=True)

    def contains(self, text: str) -> bool:
        """Whether `text` holds one of our own secrets (not merely something shaped like a token)."""
        return any(secret in text for secret in self.secrets)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return TOKEN_PATTERNS.sub(REDACTED, text)
