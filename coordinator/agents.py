"""Which Celery workers are online: a thread follows their heartbeats, inspect asks what they run.

The coordinator learns about workers two ways. A background thread consumes the broker's
worker events (worker-online, worker-heartbeat every ~2 s, worker-offline), so "who is up and
when did it last beat" costs nothing to read: /metrics and /api/v1/agents use it. What each
worker consumes and runs right now is asked on demand with Celery's inspect broadcast, which
waits for replies, so it has a short timeout and runs off the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from celery import Celery

from coordinator.dispatch import BROKER_ERRORS

log = logging.getLogger(__name__)

WORKER_EVENTS = ("worker-online", "worker-heartbeat", "worker-offline")
# Heartbeats a worker may miss before it counts as gone: Celery's own expiry window is 2x.
EXPIRE_FACTOR = 2.5
DEFAULT_FREQ = 2.0
# A worker that has been gone this long is forgotten, so the registry stays small.
FORGET_SECONDS = 3600.0
RECONNECT_SECONDS = 2.0
STOP_CHECK_SECONDS = 0.25


@dataclass(frozen=True)
class WorkerSeen:
    """What the last event of one worker said, stamped with this host's clock when it arrived."""

    hostname: str
    last_heartbeat: float  # epoch seconds, local receive time (immune to the worker's clock skew)
    freq: float = DEFAULT_FREQ
    offline: bool = False  # it said goodbye (warm shutdown)
    active: int = 0  # tasks executing, per its last heartbeat
    processed: int = 0
    loadavg: tuple[float, ...] = ()
    sw_ver: str = ""
    pid: int | None = None

    def alive(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return not self.offline and now < self.last_heartbeat + self.freq * EXPIRE_FACTOR


class WorkerWatcher:
    """Follows worker events in a daemon thread; reads are cheap snapshots under a lock."""

    def __init__(self, celery: Celery) -> None:
        self.celery = celery
        self._seen: dict[str, WorkerSeen] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._receiver: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="worker-events", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._receiver is not None:
            self._receiver.should_stop = True  # the consume loop checks it between drains
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def workers(self) -> list[WorkerSeen]:
        """Every worker heard from in the last FORGET_SECONDS, by hostname."""
        cutoff = time.time() - FORGET_SECONDS
        with self._lock:
            for name in [name for name, seen in self._seen.items() if seen.last_heartbeat < cutoff]:
                del self._seen[name]
            return sorted(self._seen.values(), key=lambda seen: seen.hostname)

    def online(self) -> list[WorkerSeen]:
        now = time.time()
        return [seen for seen in self.workers() if seen.alive(now)]

    def on_event(self, event: dict[str, Any]) -> None:
        """Record one worker event (as Celery's EventReceiver hands it over)."""
        hostname = event.get("hostname")
        if not isinstance(hostname, str):
            return
        received = float(event.get("local_received") or time.time())
        with self._lock:
            previous = self._seen.get(hostname)
            seen = previous or WorkerSeen(hostname=hostname, last_heartbeat=received)
            seen = replace(seen, last_heartbeat=received, offline=event.get("type") == "worker-offline",
                           freq=float(event.get("freq") or seen.freq), active=int(event.get("active") or 0),
                           processed=int(event.get("processed") or 0),
                           loadavg=tuple(float(x) for x in event.get("loadavg") or ()),
                           sw_ver=str(event.get("sw_ver") or seen.sw_ver), pid=event.get("pid") or seen.pid)
            self._seen[hostname] = seen

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._consume()
            except BROKER_ERRORS as exc:
                log.warning("worker events: broker unreachable (%s: %s); retrying in %ss",
                            type(exc).__name__, exc, RECONNECT_SECONDS)
            self._stop.wait(RECONNECT_SECONDS)

    def _consume(self) -> None:
        with self.celery.connection_for_read() as connection:
            # "worker.#": on Redis (fanout patterns) only worker events are delivered, not every task's
            receiver = self.celery.events.Receiver(
                connection, handlers={name: self.on_event for name in WORKER_EVENTS}, routing_key="worker.#")
            self._receiver = receiver
            if self._stop.is_set():
                return
            # wakeup asks every worker for a heartbeat now, so a fresh coordinator knows them at once;
            # should_stop is checked between drains, so stop() takes at most STOP_CHECK_SECONDS
            for _ in receiver.consume(limit=None, timeout=None, safety_interval=STOP_CHECK_SECONDS, wakeup=True):
                pass


def inspect_queues(celery: Celery, *, timeout: float, expected: int | None = None) -> dict[str, list[str]]:
    """Queue names each worker consumes; waits at most `timeout`, less once `expected` replied."""
    replies = celery.control.inspect(timeout=timeout, limit=expected or None).active_queues() or {}
    return {host: sorted(str(queue.get("name")) for queue in queues or []) for host, queues in replies.items()}


def inspect_active(celery: Celery, *, timeout: float, expected: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """Tasks each worker is executing, as Celery describes them (id, kwargs, time_start...)."""
    replies = celery.control.inspect(timeout=timeout, limit=expected or None).active() or {}
    return {host: list(tasks or []) for host, tasks in replies.items()}
