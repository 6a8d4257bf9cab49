"""Hosts for the Ansible tests: systemd containers on a docker network of the test's own.

Each "host" is a container of an image built FROM localbase/debian-systemd with the Debian packages
the roles install already in it (the roles still install them; apt then only finds them present), so
a converge is mostly pip and systemd. The fake GitHub, git and Anthropic servers run in the test
process on 127.0.0.1; a relay on the network's gateway address lets the containers reach them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ANSIBLE_DIR = Path(__file__).resolve().parents[2] / "ansible"
BASE_IMAGE = "localbase/debian-systemd:bookworm"
# What the roles install on a bare host; preinstalled so a converge spends no time in apt.
PREINSTALLED = ["redis-server", "postgresql", "python3-psycopg2", "git", "bubblewrap", "slirp4netns", "nftables",
                "python3-venv", "python3-packaging", "util-linux"]
DOCKERFILE = f"""FROM {BASE_IMAGE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
    {' '.join(PREINSTALLED)}
# Debian's redis unit sets PrivateUsers=true, which systemd cannot set up inside this container
# ("Failed to set up user namespacing"); on a real host the unit works as shipped.
RUN mkdir -p /etc/systemd/system/redis-server.service.d && \\
    printf '[Service]\\nPrivateUsers=false\\n' > /etc/systemd/system/redis-server.service.d/container.conf
"""
# systemd as PID 1 (../shared/recipes): no --privileged here. seccomp and systempaths unconfined are
# what bubblewrap needs in a container (user namespaces, an unmasked /proc), with no capability added
# for it; /dev/net/tun is for setup phases granted network (slirp4netns).
SYSTEMD_FLAGS = ["--cap-add", "SYS_ADMIN", "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
                 "--tmpfs", "/run", "--tmpfs", "/run/lock", "--security-opt", "seccomp=unconfined",
                 "--security-opt", "systempaths=unconfined", "--device", "/dev/net/tun"]
# pip's download cache, shared by the hosts and kept between runs as docker keeps the image: the
# roles still install every dependency from the package index, but download each wheel once.
PIP_CACHE_VOLUME = "forgecrew-ansible-test-pip-cache"
DOCKER = shutil.which("docker", path="/usr/bin:" + os.environ.get("PATH", "")) or "docker"


def docker(*args: str, check: bool = True, timeout: float = 600, input: str | None = None,
           ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, input=input)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done


def why_not_runnable() -> str | None:
    """A reason the test cannot run here (no daemon, no ansible, no base image), else None."""
    if shutil.which(DOCKER) is None:
        return "no docker client on PATH (.ci/docker-env installs docker.io)"
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no docker daemon answers: {exc}"
    if info.returncode != 0:
        return f"no docker daemon answers: {info.stderr.strip()[-300:]}"
    for tool in ("ansible-playbook", "ansible-lint"):
        if not ansible_tool(tool).exists():
            return f"{tool} is not installed (pip install -e '.[deploy]')"
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
        return f"the image {BASE_IMAGE} does not exist (.ci/docker-env builds it)"
    return None


def ansible_tool(name: str) -> Path:
    """The tool next to this interpreter (the project's virtualenv), where pip put it."""
    import sys

    return Path(sys.executable).parent / name


def host_image() -> str:
    """The test host image, tagged by its Dockerfile so docker's cache is reused across runs."""
    tag = "forgecrew-ansible-host:" + hashlib.sha256(DOCKERFILE.encode()).hexdigest()[:12]
    if docker("image", "inspect", tag, check=False).returncode != 0:
        docker("build", "--network", "host", "-t", tag, "-", input=DOCKERFILE, timeout=900)
    return tag


@dataclass
class Cluster:
    """A docker network and the systemd containers on it; everything named with one unique prefix."""

    prefix: str = field(default_factory=lambda: f"fcat-{uuid.uuid4().hex[:8]}")
    containers: list[str] = field(default_factory=list)
    network: str = ""
    gateway: str = ""

    def create_network(self) -> None:
        self.network = f"{self.prefix}-net"
        docker("network", "create", "--label", f"forgecrew-test={self.prefix}", self.network)
        self.gateway = docker("network", "inspect", self.network, "-f",
                              "{{range .IPAM.Config}}{{.Gateway}}{{end}}").stdout.strip()

    def start_host(self, short: str, image: str) -> str:
        name = f"{self.prefix}-{short}"
        docker("run", "-d", "--name", name, "--hostname", name, "--network", self.network,
               "--label", f"forgecrew-test={self.prefix}", "-v", f"{PIP_CACHE_VOLUME}:/root/.cache/pip",
               *SYSTEMD_FLAGS, image)
        self.containers.append(name)
        return name

    def wait_booted(self, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.exec(name, "systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.3)
        raise AssertionError(f"{name}: systemd did not finish booting ({state!r})")

    def exec(self, name: str, *argv: str, check: bool = True, timeout: float = 120,
             ) -> subprocess.CompletedProcess[str]:
        return docker("exec", name, *argv, check=check, timeout=timeout)

    def address(self, name: str) -> str:
        return docker("inspect", name, "-f",
                      "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}").stdout.strip()

    def destroy(self) -> None:
        for name in reversed(self.containers):
            docker("rm", "-f", "-v", name, check=False, timeout=120)
        if self.network:
            docker("network", "rm", self.network, check=False, timeout=60)


class Relay:
    """Forwards TCP connections from `listen_host`:<ephemeral port> to 127.0.0.1:`target_port`."""

    def __init__(self, listen_host: str, target_port: int) -> None:
        self.target_port = target_port
        self._server = socket.create_server((listen_host, 0))
        self.host, self.port = self._server.getsockname()[:2]
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name=f"relay-{self.port}").start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stopped.set()
        self._server.close()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


@dataclass
class Converge:
    """One ansible-playbook run: its output, how long it took, and the recap per host."""

    returncode: int
    output: str
    seconds: float
    recap: dict[str, dict[str, int]]

    def changed(self) -> dict[str, int]:
        return {host: counts.get("changed", 0) for host, counts in self.recap.items()}

    def changed_tasks(self) -> list[str]:
        """The "changed: [host]" lines with the task each belongs to, for a failing idempotence check."""
        task, found = "", []
        for line in self.output.splitlines():
            if line.startswith(("TASK [", "RUNNING HANDLER [")):
                task = line.split("[", 1)[1].rsplit("]", 1)[0]
            elif line.startswith("changed:"):
                found.append(f"{task}: {line}")
        return found


RECAP = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$")


def run_playbook(inventory: Path, *args: str, timeout: float = 600) -> Converge:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0",
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_HOST_KEY_CHECKING": "False",
           "ANSIBLE_LOCAL_TEMP": str(inventory.parent / "ansible-tmp"),
           "ANSIBLE_HOME": str(inventory.parent / "ansible-home")}
    started = time.monotonic()
    done = subprocess.run([str(ansible_tool("ansible-playbook")), "-i", str(inventory),
                           str(ANSIBLE_DIR / "site.yml"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ANSIBLE_DIR)
    recap: dict[str, dict[str, int]] = {}
    for line in done.stdout.split("PLAY RECAP")[-1].splitlines():
        if match := RECAP.match(line.strip()):
            recap[match[1]] = {key: int(value) for key, value in
                               (item.split("=") for item in match[2].split())}
    return Converge(done.returncode, done.stdout + done.stderr, time.monotonic() - started, recap)


def write_inventory(path: Path, groups: dict[str, list[str]], variables: dict[str, Any]) -> None:
    """An inventory (JSON is YAML) of docker-connected hosts: groups of host names, and vars for all."""
    worker_groups = {group: members for group, members in groups.items() if group.startswith("workers_")}
    children: dict[str, Any] = {group: {"hosts": {host: {} for host in members}}
                                for group, members in groups.items() if not group.startswith("workers_")}
    children["workers"] = {"children": {group: {"hosts": {host: {} for host in members}}
                                        for group, members in worker_groups.items()}}
    inventory = {"all": {"vars": {"ansible_connection": "community.docker.docker", **variables},
                         "children": children}}
    path.write_text(json.dumps(inventory, indent=2))
