"""A thread that takes work in batches: what arrived while it handled the last batch, and a little more.

The coordinator's writer (group commit) and sender both pay per batch, not per item (a commit,
a producer, a recording transaction), so under load they do less work per item the more there
is. Started on first use; stop() handles what is queued, then ends the thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class BatchThread(Generic[T]):
    def __init__(self, name: str, handle: Callable[[list[T]], None], *, max_batch: int,
                 linger: float = 0.0) -> None:
        """`linger`: after a batch's first item, how long to wait for more before handling it."""
        self.name, self.handle, self.max_batch, self.linger = name, handle, max_batch, linger
        self._queue: queue.SimpleQueue[T | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, item: T) -> None:
        self._ensure_started()
        self._queue.put(item)

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            batch, deadline = [first], time.monotonic() + self.linger
            while len(batch) < self.max_batch:
                try:
                    wait = deadline - time.monotonic()
                    item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self.handle(batch)
