"""Worker hosts as network namespaces of the test's own, each joined to the root namespace by a veth pair.

Inside a host the services (PostgreSQL, Redis, the fake model and GitHub) answer on 127.0.0.1 at
their usual ports: a relay there forwards over the veth to a relay on the root side, which
forwards to the real service. Every byte a worker sends crosses its veth, so `cut()` partitions
the host from all of them at once, without resetting a single connection (as a failed switch or
cable does), and `restore()` lets the stalled connections carry on.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# iproute2's `ip`; /usr/sbin is not on every PATH (Debian's for a plain user)
IP = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")


def ip(*args: str, namespace: str | None = None) -> None:
    assert IP, "iproute2 is not installed (apt-get install iproute2)"
    prefix = [IP, "netns", "exec", namespace] if namespace else []
    subprocess.run([*prefix, IP, *args], check=True, capture_output=True, text=True, timeout=30)


@dataclass
class Host:
    """One worker host: its namespace, the veth ends, and the /30 between them."""

    name: str
    host_if: str
    ns_if: str
    host_addr: str
    ns_addr: str
    relays: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def prefix(self) -> list[str]:
        """What a command is prefixed with to run on this host."""
        return [str(IP), "netns", "exec", self.name]

    def cut(self) -> None:
        ip("link", "set", "dev", self.host_if, "down")

    def restore(self) -> None:
        ip("link", "set", "dev", self.host_if, "up")


class Network:
    """`count` hosts in 10.231.x.0/30 subnets; everything made here is removed by close(), even half made."""

    def __init__(self, ports: list[int], count: int = 2) -> None:
        self.ports = ports
        tag = uuid.uuid4().hex[:4]
        third = random.randrange(0, 250)
        self.hosts = [Host(f"fc-{tag}-{n}", f"fc{tag}h{n}", f"fc{tag}n{n}", f"10.231.{third}.{4 * n + 1}",
                           f"10.231.{third}.{4 * n + 2}") for n in range(count)]

    def __enter__(self) -> Network:
        try:
            for host in self.hosts:
                ip("netns", "add", host.name)
            for host in self.hosts:
                self._make(host)
            for host in self.hosts:  # each namespace still enterable once all exist
                subprocess.run([*host.prefix, "true"], check=True, capture_output=True, timeout=30)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _make(self, host: Host) -> None:
        ip("link", "add", host.host_if, "type", "veth", "peer", "name", host.ns_if)
        ip("link", "set", host.ns_if, "netns", host.name)
        ip("addr", "add", f"{host.host_addr}/30", "dev", host.host_if)
        ip("link", "set", host.host_if, "up")
        ip("addr", "add", f"{host.ns_addr}/30", "dev", host.ns_if, namespace=host.name)
        ip("link", "set", host.ns_if, "up", namespace=host.name)
        ip("link", "set", "lo", "up", namespace=host.name)
        outside = [f"{host.host_addr}:{port}=127.0.0.1:{port}" for port in self.ports]
        inside = [f"127.0.0.1:{port}={host.host_addr}:{port}" for port in self.ports]
        host.relays.append(self._relay([], outside))
        host.relays.append(self._relay(host.prefix, inside))

    def _relay(self, prefix: list[str], pairs: list[str]) -> subprocess.Popen[str]:
        relay = subprocess.Popen([*prefix, sys.executable, "-m", "tests.faults.tcp_forward", *pairs], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert relay.stdout is not None
        line = relay.stdout.readline()
        if line.strip() != "ready":
            relay.kill()
            raise RuntimeError(f"relay {pairs} did not start: {line}{relay.stdout.read()}")
        return relay

    def close(self) -> None:
        for host in self.hosts:
            for relay in host.relays:
                relay.kill()
                relay.wait(timeout=10)
            host.relays.clear()
            # deleting the namespace destroys its veth end and with it the pair; the explicit delete
            # covers a pair whose inner end never made it into the namespace
            subprocess.run([str(IP), "netns", "del", host.name], capture_output=True, timeout=30)
            subprocess.run([str(IP), "link", "del", host.host_if], capture_output=True, timeout=30)
