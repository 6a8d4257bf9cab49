"""User-mode networking for a sandbox that was granted it: the internet, never the host or a LAN.

The sandbox always has a network namespace of its own. When a phase is granted network (a
repository's setup that installs dependencies), slirp4netns gives that namespace a tap device
whose traffic leaves through ordinary sockets of slirp4netns on the host (run as the worker's
user, which may open /dev/net/tun and join the namespace, and confined by its own
--enable-seccomp, and --enable-sandbox too for a root worker), with `--disable-host-loopback`
so the gateway 10.0.2.2 is not the host's 127.0.0.1. slirp4netns itself would still connect anywhere the host can reach (a Redis on the LAN, the host's own
public address), so before the command starts an nftables filter inside the sandbox's
namespace rejects every destination but the public internet: loopback, RFC 1918 and the other
special ranges, every address and on-link network of the host's interfaces, and what the
operator adds in SANDBOX_BLOCKED_NETWORKS. DNS goes to slirp's forwarder at 10.0.2.3 only.
The filter is applied by the worker (the namespace's owner), not by anything inside; a filter
that cannot be applied means no network at all, never an unfiltered one.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from workers.sandbox.base import SandboxError

SLIRP_DNS = "10.0.2.3"
RESOLV_CONF = f"nameserver {SLIRP_DNS}\noptions attempts:2 timeout:2\n".encode()
ALWAYS_BLOCKED = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/3",
    "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b::/96", "fc00::/7", "fe80::/10", "ff00::/8",
)
SETUP_TIMEOUT = 10.0
NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1): the user namespace that owns a namespace


def host_networks(proc: Path = Path("/proc")) -> list[str]:
    """The host's own addresses and on-link networks (IPv4 and IPv6), as CIDRs."""
    found: set[str] = set()
    try:
        lines = (proc / "net" / "fib_trie").read_text().splitlines()
    except OSError:
        lines = []
    for previous, line in zip(lines, lines[1:]):
        if line.strip().startswith("/32 host LOCAL") and "|--" in previous:
            found.add(previous.split("|--")[1].strip() + "/32")
    try:
        routes = (proc / "net" / "route").read_text().splitlines()[1:]
    except OSError:
        routes = []
    for route in routes:
        fields = route.split()
        if len(fields) >= 8 and fields[2] == "00000000" and fields[0] != "lo":
            destination, mask = (_le_ipv4(value) for value in (fields[1], fields[7]))
            if mask != "0.0.0.0":
                found.add(str(ipaddress.ip_network(f"{destination}/{mask}", strict=False)))
    try:
        inet6 = (proc / "net" / "if_inet6").read_text().splitlines()
    except OSError:
        inet6 = []
    for line in inet6:
        fields = line.split()
        if len(fields) >= 6 and fields[5] != "lo":
            address = ipaddress.ip_address(":".join(fields[0][i:i + 4] for i in range(0, 32, 4)))
            found.add(f"{address}/128")
            found.add(str(ipaddress.ip_network(f"{address}/{int(fields[2], 16)}", strict=False)))
    return sorted(found)


def _le_ipv4(value: str) -> str:
    return str(ipaddress.IPv4Address(int(value, 16).to_bytes(4, "little")))


def ruleset(blocked: Iterable[str]) -> str:
    """nftables rules for the sandbox's namespace: slirp's DNS, then nothing private or of the host."""
    v4, v6 = [], []
    for cidr in blocked:
        network = ipaddress.ip_network(cidr, strict=False)
        (v4 if network.version == 4 else v6).append(str(network))
    rules = [
        "table inet forgecrew {",
        "  chain out {",
        "    type filter hook output priority 0; policy accept;",
        '    oifname "lo" accept',
        f"    ip daddr {SLIRP_DNS} udp dport 53 accept",
        f"    ip daddr {SLIRP_DNS} tcp dport 53 accept",
    ]
    if v4:
        rules.append(f"    ip daddr {{ {', '.join(sorted(set(v4)))} }} reject")
    if v6:
        rules.append(f"    ip6 daddr {{ {', '.join(sorted(set(v6)))} }} reject")
    rules += ["  }", "}"]
    return "\n".join(rules) + "\n"

TUN_DEVICE = "/dev/net/tun"


@dataclass(frozen=True)
class NetworkTools:
    slirp4netns: str
    nft: str
    nsenter: str

    @classmethod
    def find(cls) -> NetworkTools:
        """The three programs user-mode networking needs, or a SandboxError naming the missing one."""
        path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin"
        found = {name: shutil.which(name, path=path) for name in ("slirp4netns", "nft", "nsenter")}
        missing = [name for name, where in found.items() if where is None]
        if missing:
            raise SandboxError(f"network was granted, but {', '.join(missing)} is not installed on this worker "
                               "host (Debian packages slirp4netns, nftables, util-linux); the command ran nowhere")
        if not os.access(TUN_DEVICE, os.R_OK | os.W_OK):
            # said now, not as whichever later step (the filter, slirp4netns) happens to fail first
            raise SandboxError(f"network was granted, but this worker's user cannot open {TUN_DEVICE} (it needs "
                               "mode 0666, as udev makes it), which slirp4netns needs; the command ran nowhere")
        return cls(found["slirp4netns"] or "", found["nft"] or "", found["nsenter"] or "")


@dataclass
class UserNetwork:
    """slirp4netns plus the egress filter for one sandbox; `attach` before the command starts."""

    tools: NetworkTools
    blocked: list[str]
    slirp: subprocess.Popen[bytes] | None = None
    _exit_write: int = -1

    def attach(self, child_pid: int) -> None:
        """Filter first, then bring the link up: the command never runs with an unfiltered network.

        Both steps enter the sandbox's network namespace; an unprivileged worker also enters the user
        namespace that owns it, to hold CAP_NET_ADMIN there. That is not the namespace of the sandbox's
        processes (bubblewrap nests one more to switch to uid 1000), so the owner is asked of the
        kernel (NS_GET_USERNS). Root holds the capability over every namespace and enters none.
        """
        net_fd = os.open(f"/proc/{child_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            owner_fd = fcntl.ioctl(net_fd, NS_GET_USERNS)
        except OSError as exc:
            os.close(net_fd)
            raise SandboxError(f"cannot find the sandbox's network namespace owner: {exc}") from None
        try:
            self._filter(net_fd, owner_fd)
            self._link(net_fd, owner_fd)
        finally:
            os.close(net_fd)
            os.close(owner_fd)

    def _link(self, net_fd: int, owner_fd: int) -> None:
        ready_read, ready_write = os.pipe()
        exit_read, self._exit_write = os.pipe()
        try:
            self.slirp = subprocess.Popen(
                [self.tools.slirp4netns, "--configure", "--mtu=65520", "--disable-host-loopback",
                 *_confinement(), f"--ready-fd={ready_write}", f"--exit-fd={exit_read}",
                 "--netns-type=path", *_join_owner("--userns-path", owner_fd), f"/proc/self/fd/{net_fd}", "tap0"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                pass_fds=(ready_write, exit_read, net_fd, owner_fd), start_new_session=True)
            os.close(ready_write)
            ready_write = -1
            if not _wait_readable(ready_read, SETUP_TIMEOUT) or not os.read(ready_read, 1):
                raise SandboxError(f"slirp4netns did not bring the sandbox's network up: {self._slirp_error()}")
        finally:
            os.close(ready_read)
            os.close(exit_read)
            if ready_write >= 0:
                os.close(ready_write)

    def _filter(self, net_fd: int, owner_fd: int) -> None:
        join = [*_join_owner("--user", owner_fd), "--preserve-credentials"] if os.geteuid() else []
        done = subprocess.run([self.tools.nsenter, *join, f"--net=/proc/self/fd/{net_fd}", self.tools.nft, "-f", "-"],
                              input=ruleset(self.blocked).encode(), capture_output=True, timeout=SETUP_TIMEOUT,
                              pass_fds=(net_fd, owner_fd))
        if done.returncode != 0:
            raise SandboxError("could not apply the sandbox's network filter, so it gets no network: "
                               + done.stderr.decode(errors="replace").strip()[:500])

    def _slirp_error(self) -> str:
        if self.slirp is None:
            return "not started"
        if self.slirp.poll() is None:
            return "no answer in time"
        assert self.slirp.stderr is not None
        text = self.slirp.stderr.read().decode(errors="replace").strip()[-500:] or f"exit {self.slirp.returncode}"
        if "/dev/net/tun" in text:
            text += " (the worker's user must be able to open /dev/net/tun, mode 0666 as udev makes it)"
        return text

    def close(self) -> None:
        if self._exit_write >= 0:
            os.close(self._exit_write)  # slirp4netns ends when this closes
            self._exit_write = -1
        if self.slirp is not None:
            try:
                self.slirp.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.slirp.kill()
                self.slirp.wait()
            if self.slirp.stderr is not None:
                self.slirp.stderr.close()


def _confinement() -> list[str]:
    """slirp4netns's own confinement: seccomp always; its mount sandbox only for a root worker.

    --enable-sandbox makes slirp4netns's parent join the sandbox's user namespace and become its
    gid 0, which bubblewrap maps only for root (an unprivileged worker's namespace maps its own gid
    alone), so there it fails with "setegid(0)" and the command would get no network at all.
    """
    return ["--enable-sandbox", "--enable-seccomp"] if os.geteuid() == 0 else ["--enable-seccomp"]


def _join_owner(option: str, owner_fd: int) -> list[str]:
    """The option that enters the owning user namespace, for a worker that is not root."""
    return [] if os.geteuid() == 0 else [f"{option}=/proc/self/fd/{owner_fd}"]


def read_child_pid(info_fd: int, timeout: float = SETUP_TIMEOUT) -> int | None:
    """The sandbox's first process, from what bwrap writes to --info-fd once its namespaces exist.

    None when bwrap ended first (its own error is then in the command's output).
    """
    data = b""
    while not data.rstrip().endswith(b"}"):
        if not _wait_readable(info_fd, timeout):
            return None
        chunk = os.read(info_fd, 4096)
        if not chunk:
            break
        data += chunk
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError):
        return None


def _wait_readable(fd: int, timeout: float) -> bool:
    import select

    readable, _, _ = select.select([fd], [], [], timeout)
    return bool(readable)
