"""Group commit for intake: one thread per process writes deliveries, many to a transaction.

A delivery's 2xx still means its rows are committed: the request waits for the commit of the
batch it is in. Under load the batch holds every delivery that arrived while the previous one was
written, so a process pays one commit (one WAL flush) and one connection checkout per batch
instead of per delivery; with one request at a time a batch is that request, as before.

A handler that fails rolls its whole batch back; each delivery of the batch is then written again
alone, so only the failing one answers 500 and none is recorded twice or lost.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future
from typing import TYPE_CHECKING

from coordinator.batch_thread import BatchThread

if TYPE_CHECKING:
    from coordinator.services import Services
    from coordinator.webhooks.endpoint import Answer

log = logging.getLogger(__name__)
# Deliveries per transaction at most: bounded lock time and latency for the last of a batch.
MAX_BATCH = 64

_Item = tuple[dict[str, str], bytes, "Future[Answer]"]


class GroupCommit:
    """Started on first use; stop() writes what is queued, then ends the thread."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._thread: BatchThread[_Item] = BatchThread("intake-writer", self.write_batch, max_batch=MAX_BATCH)

    async def process(self, headers: dict[str, str], body: bytes) -> Answer:
        """The delivery's answer once the transaction holding it has committed (or its error)."""
        future: Future[Answer] = Future()
        self._thread.put((headers, body, future))
        return await asyncio.wrap_future(future)

    def stop(self, timeout: float = 10.0) -> None:
        self._thread.stop(timeout)

    def write_batch(self, batch: list[_Item]) -> None:
        """One transaction for these deliveries; each future gets its answer after the commit."""
        from coordinator.webhooks.endpoint import process_delivery

        try:
            with self.services.db.session() as session:
                answers = [process_delivery(self.services, headers, body, session=session)
                           for headers, body, _ in batch]
        except BaseException as exc:  # rolled back: nothing of the batch is recorded
            if len(batch) == 1:
                batch[0][2].set_exception(exc)
                return
            log.warning("a batch of %d deliveries failed (%s: %s); writing each alone", len(batch),
                        type(exc).__name__, exc)
            for item in batch:
                self.write_batch([item])
            return
        for (_, _, future), answer in zip(batch, answers):
            future.set_result(answer)
