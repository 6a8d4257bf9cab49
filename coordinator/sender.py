"""The outbox's send half for webhook intake: publish committed tasks off the request path, in batches.

The request's transaction commits the task (TRIAGED) and the 202 goes out; then the task is handed
to one thread per process that publishes it and records the sends of everything it published in
one transaction. A task it never publishes (broker down, process killed) stays TRIAGED and the
reconciler sends it once its grace has passed, exactly as after a failed send.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, wait
from dataclasses import dataclass, field


from common.celery_app import task_label
from coordinator import admission
from coordinator.batch_thread import BatchThread
from coordinator.dispatch import Dispatcher

log = logging.getLogger(__name__)
ACTOR = "dispatcher"
# Sends recorded per transaction at most: bounded locks, and a batch is still one commit under load.
BATCH = 200
# How long a batch waits for more after its first task: under load one transaction records many
# sends instead of one each; an idle coordinator sends a task this much later, long before any
# worker could tell.
LINGER_SECONDS = 0.005


@dataclass
class Send:
    """A task just created in the request's transaction, and what its first message needs."""

    task_id: int
    specialty: str
    number: int
    label: str
    done: Future[bool] = field(default_factory=Future, repr=False)
    priority: int = 0  # tasks.priority: -1 low, 0 normal, 1 high

    @classmethod
    def first(cls, task_id: int, specialty: str, repo: str, issue_number: int | None, *,
              priority: int = 0) -> Send:
        """The first send of a task just inserted (nothing to read back: its dispatch count is 0)."""
        return cls(task_id, specialty, 1, task_label(repo, issue_number, specialty, task_id), priority=priority)


class Sender:
    """One background thread per process, started on first use, stopped with the app."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self._thread = BatchThread("sender", self._send, max_batch=BATCH, linger=LINGER_SECONDS)
        self._lock = threading.Lock()
        self._pending: set[Future[bool]] = set()

    def submit(self, send: Send) -> Future[bool]:
        """Queue a committed task for publishing; the future says whether it was sent."""
        with self._lock:
            self._pending.add(send.done)
        send.done.add_done_callback(self._settled)
        self._thread.put(send)
        return send.done

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is sent or given up; False on timeout."""
        with self._lock:
            pending = list(self._pending)
        _, not_done = wait(pending, timeout)
        return not not_done

    def _settled(self, future: Future[bool]) -> None:
        with self._lock:
            self._pending.discard(future)

    def stop(self, timeout: float = 10.0) -> None:
        """Publish what is queued, then end the thread; what it cannot finish is the reconciler's."""
        self._thread.stop(timeout)

    def _send(self, batch: list[Send]) -> None:
        """Publish in order; on the first broker failure the rest stay unsent (TRIAGED) for the reconciler."""
        sent: list[Send] = []
        admitted: list[Send] = batch
        try:
            if admission.gated(self.dispatcher.db.settings):  # a limit is on: each task admitted first
                admitted = self._admit(batch)
            with self.dispatcher.celery.producer_or_acquire() as producer:  # one producer for the batch
                for item in admitted:
                    if not self.dispatcher.send(item.task_id, item.specialty, item.number, label=item.label,
                                                producer=producer, priority=item.priority):
                        break
                    sent.append(item)
            if len(sent) < len(admitted) and admitted is not batch:
                self.dispatcher.unreserve([(item.task_id, item.number) for item in admitted[len(sent):]])
            if sent:
                self.dispatcher.record_sent_many([(item.task_id, item.number) for item in sent], actor=ACTOR)
        except Exception:  # the thread must outlive any one batch; the reconciler repairs what it left
            log.exception("sending tasks %s failed; the reconciler will resend them", [i.task_id for i in batch])
        finally:
            published = {id(item) for item in sent}
            for item in batch:
                item.done.set_result(id(item) in published)

    def _admit(self, batch: list[Send]) -> list[Send]:
        """The batch's tasks that may go now, moved to queued; the rest wait (admission.admit)."""
        with self.dispatcher.db.session() as session:
            allowed = admission.admit_many(session, [item.task_id for item in batch], self.dispatcher.db.settings,
                                           actor=ACTOR)
        return [item for item in batch if item.task_id in allowed]
