"""The one place that picks a forge adapter, so callers depend only on the Forge protocol."""

from __future__ import annotations

from typing import Any

from common.errors import SettingsError
from common.forge.base import Forge
from common.settings import Settings


def make_forge(settings: Settings, installation_id: int | None = None, **github_options: Any) -> Forge:
    """The forge named by FORGECREW_FORGE; `installation_id` selects a GitHub App installation."""
    if settings.forge == "local":
        from common.forge.local import LocalForge

        return LocalForge(settings)
    if settings.forge == "github":
        from common.forge.github import GitHubForge  # imports PyGithub only when it is needed

        github_options.setdefault("write_interval", settings.github_write_interval_seconds)
        return GitHubForge(settings, installation_id, **github_options)
    raise SettingsError(f"FORGECREW_FORGE={settings.forge!r} is not a known forge; use github or local")
