"""Fixtures of the fault tests: the fake model and GitHub, and settings that make recovery take seconds."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common.settings import Settings
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.github_server import FakeGitHub
from tests.faults.support import Forge, forge_settings, make_forge, stop_together
from tests.support import Process

# A lease of 4 s renewed every ~1.3 s, reaped every second: a dead worker's task is back in seconds.
LEASE_SECONDS = 4
REAPER_INTERVAL_SECONDS = 1.0


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """tests/conftest.py's, stopping everything at once (SIGTERM, then SIGKILL past 20 s)."""
    started: list[Process] = []
    yield started
    stop_together(started)


@pytest.fixture
def model() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def forge(tmp_path: Path) -> Iterator[Forge]:
    with FakeGitHub() as github:
        yield make_forge(github, tmp_path)


@pytest.fixture
def fault_settings(make_settings: Callable[..., Settings], forge: Forge,
                   model: FakeAnthropic) -> Callable[..., Settings]:
    """Settings for a cluster on the fake GitHub and model, with short leases; overrides win."""

    def make(**overrides: Any) -> Settings:
        values = {**forge_settings(forge, model), "lease_seconds": LEASE_SECONDS,
                  "reaper_interval_seconds": REAPER_INTERVAL_SECONDS, "max_attempts": 3, **overrides}
        return make_settings(**values)

    return make
