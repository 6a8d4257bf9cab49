"""Per-process resources of a worker, made lazily and re-made after a fork."""

from __future__ import annotations

import os
import socket
import threading
from typing import TYPE_CHECKING

from common.db import Database
from common.settings import Settings

if TYPE_CHECKING:
    from workers.llm import LLMClient


class WorkerRuntime:
    """Holds settings and the database for the Celery task bodies of one worker process.

    With the threads pool every task of the process shares one Database: its engine and
    connection pool are thread-safe, and each unit of work opens its own session.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._db: Database | None = None
        self._llm: LLMClient | None = None
        self._llm_pid = 0
        self._pid = os.getpid()
        self._lock = threading.Lock()

    @property
    def db(self) -> Database:
        with self._lock:  # the first tasks of a threads pool arrive together: make one engine, not several
            if self._db is None or self._pid != os.getpid():
                # a prefork child must not share its parent's connections
                self._db = Database(self.settings)
                self._pid = os.getpid()
            return self._db

    def llm(self) -> LLMClient:
        """One model client for the process: its HTTP client is thread-safe and keeps connections
        alive across sessions, and each new one costs about 25 ms of CPU (TLS context)."""
        from workers.llm import LLMClient

        with self._lock:
            if self._llm is None or self._llm_pid != os.getpid():  # connections are not shared across a fork
                self._llm, self._llm_pid = LLMClient.from_settings(self.settings), os.getpid()
            return self._llm

    def reset(self) -> None:
        self._lock = threading.Lock()  # a lock held in the parent at fork time would stay held in the child
        self._db = None
        self._llm = None

    def identity(self, hostname: str | None) -> str:
        """Lease owner name: Celery node, process and host, so an operator can find it.

        Tasks of a threads pool share it; the fencing token, not the name, tells their claims apart.
        """
        return f"{hostname or 'worker'}/pid{os.getpid()}@{socket.gethostname()}"
