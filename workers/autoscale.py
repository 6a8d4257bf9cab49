"""Autoscaling: a worker grows toward MAX agent tasks while its queues hold waiting messages, back to MIN after.

Celery's own autoscaler cannot serve here. It needs a pool with grow/shrink, which the threads pool
(forgecrew's default) lacks: `--autoscale` with `-P threads` crashes the worker on its first scale-up.
And it counts only the tasks the worker itself has received (`state.reserved_requests`, running plus
prefetched): a message still on the broker is invisible to it, so with prefetch 1 it never sees a
backlog, and it sizes the prefetch to MAX so one worker may reserve MAX messages while others idle.

This bootstep scales on the broker's queue depth instead. Every interval it reads the messages waiting
on the worker's queues (coordinator.metrics.broker.queue_depths: LLEN of each Redis priority list, a
passive declare on RabbitMQ) and sizes the worker to `held + waiting`, clamped to [MIN, MAX]. A size is
both the pool's slots and the consumer's prefetch count, resized together the way Celery's pool_grow /
pool_shrink control commands do, so the worker never takes more messages than it can start. It grows at
once; it shrinks only after the size has been too big for the cooldown, and never below what it holds.
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from celery import Celery, bootsteps
from celery.concurrency.thread import TaskPool as ThreadTaskPool
from celery.worker import state

from common.errors import SettingsError
from common.settings import Settings, autoscale_range

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AutoscalePlan:
    """The range a worker scales in and how quickly it reacts."""

    maximum: int
    minimum: int
    cooldown: float
    interval: float


def autoscale_plan(settings: Settings, queues: Sequence[str], requested: str | None = None) -> AutoscalePlan | None:
    """The flag, else the consumed specialties' own `autoscale`, else `worker_autoscale`; None = fixed size.

    A worker consuming several specialties with ranges of their own takes the widest (largest MAX,
    smallest MIN), so `forgecrew up --single-worker` serves each as configured.
    """
    try:
        if requested is not None:
            maximum, minimum = autoscale_range(requested)
        else:
            own = [autoscale_range(config.autoscale) for config in settings.specialties
                   if config.name in queues and config.autoscale]
            if not own and settings.worker_autoscale is None:
                return None
            own = own or [autoscale_range(settings.worker_autoscale)]  # type: ignore[arg-type]
            maximum, minimum = max(high for high, _ in own), min(low for _, low in own)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return AutoscalePlan(maximum=maximum, minimum=minimum, cooldown=settings.worker_autoscale_cooldown_seconds,
                         interval=settings.worker_autoscale_interval_seconds)


def target_size(*, held: int, waiting: int, minimum: int, maximum: int) -> int:
    """Slots wanted: one for every task the worker holds and every message still waiting, within the range."""
    return max(minimum, min(maximum, held + waiting))


class Sizer:
    """Decides the next size: up at once, down only once the current size has been too big for `cooldown`."""

    def __init__(self, minimum: int, maximum: int, cooldown: float) -> None:
        self.minimum, self.maximum, self.cooldown = minimum, maximum, cooldown
        self._needed_at: float | None = None

    def next_size(self, *, current: int, held: int, waiting: int, now: float) -> int:
        target = target_size(held=held, waiting=waiting, minimum=self.minimum, maximum=self.maximum)
        if target >= current:
            self._needed_at = now  # every slot is wanted: the cooldown starts again from here
            return target
        if self._needed_at is None:
            self._needed_at = now
        return target if now - self._needed_at >= self.cooldown else current


class ScalableThreadPool(ThreadTaskPool):
    """Celery's threads pool with grow/shrink: the executor may hold `ceiling` threads, `limit` is the size.

    Threads start lazily and an idle one costs a stack, so the real bound is the consumer's prefetch,
    which the autoscaler keeps equal to `limit`.
    """

    ceiling = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.executor.shutdown(wait=False)  # the base made one sized to the start; it has no thread yet
        self.executor = ThreadPoolExecutor(max_workers=max(self.ceiling, self.limit))

    def grow(self, n: int = 1) -> None:
        self.limit = min(self.ceiling, self.limit + n)

    def shrink(self, n: int = 1) -> None:
        self.limit = max(1, self.limit - n)

    def _get_info(self) -> Any:
        info = super()._get_info()
        info["ceiling"] = self.ceiling
        return info


def scalable_thread_pool(ceiling: int) -> type[ScalableThreadPool]:
    """The threads pool class a worker scaling up to `ceiling` uses (Celery takes a pool class)."""
    return type("ScalableThreadPool", (ScalableThreadPool,), {"ceiling": ceiling, "__module__": __name__})


class QueueDepthAutoscaler(bootsteps.StartStopStep):
    """Consumer bootstep: reads the depth in its own thread, resizes in the event loop (as Celery's does)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    plan: AutoscalePlan
    queues: tuple[str, ...] = ()

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.sizer = Sizer(self.plan.minimum, self.plan.maximum, self.plan.cooldown)
        self.waiting: int | None = None  # None: not read yet, or the broker did not answer
        self._consumer: Any = None
        self._timer: Any = None
        self._stop = threading.Event()
        # held while the depth is read: prefork forks new processes in resize(), and a child forked
        # while this thread held the connection pool's lock hangs in Celery's after-fork reset
        self._reading = threading.Lock()
        self._reader: threading.Thread | None = None
        self._broken = False

    def start(self, c: Any) -> None:
        self._consumer = c
        c.controller.autoscaler = self  # Celery's `autoscale` control command adjusts us; pool_grow refuses
        if self._reader is None:
            self._reader = threading.Thread(target=self._read_loop, args=(c.app,), name="autoscale-depth",
                                            daemon=True)
            self._reader.start()

    def register_with_event_loop(self, c: Any, hub: Any) -> None:
        if self._timer is not None:  # a reconnect registers again
            self._timer.cancel()
        self._timer = hub.call_repeatedly(self.plan.interval, self.resize, c)

    def shutdown(self, c: Any) -> None:
        self._stop.set()

    def info(self, c: Any) -> dict[str, Any]:
        current = c.pool.num_processes if c.pool else None
        return {"autoscaler": {"max": self.sizer.maximum, "min": self.sizer.minimum, "current": current,
                               "waiting": self.waiting, "held": len(state.reserved_requests)}}

    def update(self, max: int | None = None, min: int | None = None) -> tuple[int, int]:  # noqa: A002
        """Celery's `autoscale MAX MIN` control command (its argument names): a new range, within the ceiling."""
        ceiling = getattr(self._consumer.pool, "ceiling", None)
        maximum = self.sizer.maximum if max is None else int(max)
        if ceiling is not None:
            maximum = builtins.min(maximum, ceiling)
        minimum = self.sizer.minimum if min is None else int(min)
        self.sizer.maximum, self.sizer.minimum = maximum, builtins.max(1, builtins.min(minimum, maximum))
        return self.sizer.maximum, self.sizer.minimum

    def _read_loop(self, app: Celery) -> None:
        from coordinator.metrics.broker import queue_depths

        while not self._stop.wait(self.plan.interval):
            try:
                with self._reading:
                    depths = queue_depths(app, self.queues, timeout=self.plan.interval)
            except Exception as exc:  # the broker's outage is Celery's to handle; hold the size meanwhile
                if not self._broken:
                    log.warning("autoscaler: cannot read the depth of %s (%s); keeping the size",
                                ",".join(self.queues), exc)
                self._broken, self.waiting = True, None
                continue
            self._broken, self.waiting = False, sum(depths.values())
            if not self._consumer.controller.use_eventloop:
                self.resize(self._consumer)

    def resize(self, c: Any) -> None:
        """Bring the pool and the prefetch count to the size the depth asks for."""
        if self.waiting is None or c.qos is None or c.pool is None:
            return
        current = c.pool.num_processes
        size = self.sizer.next_size(current=current, held=len(state.reserved_requests), waiting=self.waiting,
                                    now=time.monotonic())
        if size == current:
            return
        if not self._reading.acquire(blocking=False):  # a read under way: never wait in the event loop
            return
        try:  # prefork forks its new processes in maintain_pool()
            (c.pool.grow if size > current else c.pool.shrink)(abs(size - current))
        except ValueError:  # prefork: fewer idle processes than asked; the next round goes on
            pass
        finally:
            c.pool.maintain_pool()
            self._reading.release()
        changed = c.pool.num_processes - current
        c.pool.limit = c.pool.num_processes  # what stats report as max-concurrency (`forgecrew workers` CONC)
        if changed:
            c._update_prefetch_count(changed)  # as Celery's pool_grow/pool_shrink commands do
            log.info("autoscaler: %s from %d to %d (%d waiting, %d held)", "grew" if changed > 0 else "shrank",
                     current, c.pool.num_processes, self.waiting, len(state.reserved_requests))


def install(app: Celery, plan: AutoscalePlan, queues: Sequence[str]) -> None:
    """Add the depth autoscaler for `queues` to `app`'s worker."""
    step = type("QueueDepthAutoscaler", (QueueDepthAutoscaler,),
                {"plan": plan, "queues": tuple(queues), "__module__": __name__})
    app.steps["consumer"].add(step)
