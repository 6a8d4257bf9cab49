"""Per-process resources of a worker, made lazily and re-made after a fork."""

from __future__ import annotations

import os
import socket

from common.db import Database
from common.settings import Settings


class WorkerRuntime:
    """Holds settings and the database for the Celery task bodies of one worker process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._db: Database | None = None
        self._pid = os.getpid()

    @property
    def db(self) -> Database:
        if self._db is None or self._pid != os.getpid():
            # a prefork child must not share its parent's connections
            self._db = Database(self.settings)
            self._pid = os.getpid()
        return self._db

    def reset(self) -> None:
        self._db = None

    def identity(self, hostname: str | None) -> str:
        """Lease owner name: Celery node, process and host, so an operator can find it."""
        return f"{hostname or 'worker'}/pid{os.getpid()}@{socket.gethostname()}"
