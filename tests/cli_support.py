"""Run the `forgecrew` command as a user would, for tests that read what it prints."""

from __future__ import annotations

import subprocess
import sys

from common.settings import Settings


def show_task(settings: Settings, task_id: int) -> str:
    """`forgecrew tasks show ID` against the settings' database; what it printed."""
    done = subprocess.run([sys.executable, "-m", "coordinator.cli", "tasks", "show", str(task_id)],
                          env={"PATH": "/usr/bin:/bin", "FORGECREW_DATABASE_URL": settings.database_url,
                               "FORGECREW_HOME": str(settings.home)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout
