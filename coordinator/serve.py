"""Serve the coordinator app: one process, or N forked processes sharing one listening socket.

Each process builds its own app after the fork (engine, Celery app, sender thread); only the
first one runs the reconciler, so it runs once per coordinator whatever N is. A process that
dies is started again; SIGTERM or SIGINT stops them all.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from common.database_url import normalise_url
from common.settings import Settings

log = logging.getLogger(__name__)
# A process that dies sooner than this after its start is restarted only after this long.
RESTART_PAUSE_SECONDS = 1.0
# Python's default 5 ms: a thread back from a database round trip waits that long for the GIL
# while the event loop or the sender computes; requests make several round trips each.
SWITCH_INTERVAL_SECONDS = 0.0005


def default_workers(settings: Settings) -> int:
    """One process per usable core on PostgreSQL; one on SQLite, whose single writer more would only queue on."""
    if normalise_url(settings.database_url).startswith("sqlite"):
        return 1
    return max(1, len(os.sched_getaffinity(0)))


def serve(settings: Settings, *, host: str, port: int, workers: int, reconciler: bool, access_log: bool) -> None:
    """Run until SIGINT/SIGTERM; uvicorn picks uvloop and httptools when they are installed."""
    import uvicorn

    from coordinator.app import require_webhook_secret

    # before binding or forking: server processes that cannot build the app would be restarted for ever
    require_webhook_secret(settings)
    options: dict[str, Any] = {"log_level": "info", "proxy_headers": True, "access_log": access_log}
    if workers <= 1:
        from coordinator.app import create_app

        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        uvicorn.run(create_app(settings, run_reconciler=reconciler), host=host, port=port, **options)
        return
    listener = _listen(host, port)
    log.info("coordinator on http://%s:%d in %d processes (reconciler in the first: %s)", host, port, workers,
             "yes" if reconciler else "no")
    _Processes(settings, listener, workers, reconciler, options).run()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(2048)
    listener.set_inheritable(True)
    return listener


class _Processes:
    def __init__(self, settings: Settings, listener: socket.socket, workers: int, reconciler: bool,
                 options: dict[str, Any]) -> None:
        self.settings, self.listener, self.workers = settings, listener, workers
        self.reconciler, self.options = reconciler, options
        self.children: dict[int, tuple[int, float]] = {}  # pid -> (index, started at)
        self.stopping = False

    def run(self) -> None:
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(self.workers):
                self._start(index)
            while self.children:
                try:
                    pid, status = os.wait()
                except ChildProcessError:
                    break
                index, started = self.children.pop(pid, (None, 0.0))
                if index is None or self.stopping:
                    continue
                log.warning("coordinator process %d (pid %d) exited (status %d); starting it again", index, pid,
                            os.waitstatus_to_exitcode(status))
                if time.monotonic() - started < RESTART_PAUSE_SECONDS:
                    time.sleep(RESTART_PAUSE_SECONDS)
                if not self.stopping:
                    self._start(index)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.listener.close()

    def _stop(self, signum: int, _frame: Any) -> None:
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _start(self, index: int) -> None:
        pid = os.fork()
        if pid:
            self.children[pid] = (index, time.monotonic())
            return
        code = 0
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            self._child(index)
        except BaseException:  # a child must never return into the parent's loop
            log.exception("coordinator process %d failed", index)
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)

    def _child(self, index: int) -> None:
        import uvicorn

        from coordinator.app import create_app

        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        app = create_app(self.settings, run_reconciler=self.reconciler and index == 0)
        uvicorn.Server(uvicorn.Config(app, **self.options)).run(sockets=[self.listener])
