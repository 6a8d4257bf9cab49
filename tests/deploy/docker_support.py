"""Docker for the deployment tests: a daemon that answers (or the reason there is none), image
builds from the local base, and docker-compose projects that clean up after themselves."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKER_ENV_SCRIPT = ROOT / ".ci" / "docker-env"
# Debian's client: the first `docker` on PATH may be a newer one without the builders it expects
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "docker")
LOCAL_BASE = "localbase/debian:bookworm"
LOCAL_SYSTEMD_BASE = "localbase/debian-systemd:bookworm"


def docker(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the docker client; a failure's message carries its stderr."""
    done = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done


def _answers() -> bool:
    try:
        return subprocess.run([DOCKER, "info"], capture_output=True, timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _image_exists(name: str) -> bool:
    return docker("image", "inspect", name, check=False).returncode == 0


@cache
def docker_unavailable(*images: str) -> str | None:
    """Why the Docker tests cannot run here, or None once a daemon answers and `images` exist.

    When something is missing and we are root, .ci/docker-env (the project's own setup) is run
    once to install and start it, so these tests skip only where no daemon can start at all.
    """
    wanted = images or (LOCAL_BASE,)
    if _answers() and all(_image_exists(image) for image in wanted) and shutil.which("docker-compose"):
        return None
    if os.geteuid() != 0:
        return "no Docker daemon with the localbase images answers, and only root may run .ci/docker-env"
    try:
        done = subprocess.run(["bash", str(DOCKER_ENV_SCRIPT)], capture_output=True, text=True, timeout=900,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f".ci/docker-env did not finish: {exc}"
    if done.returncode != 0:
        return f".ci/docker-env failed: {(done.stderr or done.stdout).strip()[-500:]}"
    if not _answers():
        return "no Docker daemon answers, even after .ci/docker-env"
    missing = [image for image in wanted if not _image_exists(image)]
    if missing:
        return f".ci/docker-env ran but {', '.join(missing)} is missing"
    if not shutil.which("docker-compose"):
        return "docker-compose is not installed"
    return None


def build_image(tag: str, context: Path, *, dockerfile: Path | None = None,
                build_args: Mapping[str, str] | None = None, timeout: float = 900) -> None:
    """`docker build` with the classic builder; Docker's layer cache makes a rebuild take seconds."""
    args = ["build", "-q", "-t", tag]
    if dockerfile is not None:
        args += ["-f", str(dockerfile)]
    for name, value in (build_args or {}).items():
        args += ["--build-arg", f"{name}={value}"]
    docker(*args, str(context), timeout=timeout)


def bridge_gateway() -> str:
    """The host's address on docker0: what `host-gateway` names inside a container."""
    config = json.loads(docker("network", "inspect", "bridge").stdout)[0]["IPAM"]["Config"][0]
    if "Gateway" in config:
        return str(config["Gateway"])
    # dockerd left it out (it does when it found docker0 already up): the bridge takes the first host
    return str(next(ipaddress.ip_network(config["Subnet"]).hosts()))


@dataclass
class Compose:
    """One docker-compose project with its own name, files and env file."""

    files: list[Path]
    env_file: Path
    project: str = field(default_factory=lambda: f"fctest{uuid.uuid4().hex[:8]}")

    def _env(self) -> dict[str, str]:
        # the env file is the only source of interpolated values: docker-compose lets the caller's
        # variables (a FORGECREW_* or POSTGRES_PASSWORD of the shell) win over it
        return {name: value for name, value in os.environ.items()
                if name in ("PATH", "HOME", "LANG", "TMPDIR") or name.startswith("DOCKER_")}

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        command = ["docker-compose", "--project-name", self.project, "--env-file", str(self.env_file)]
        for path in self.files:
            command += ["--file", str(path)]
        done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, env=self._env(),
                              check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} exited {done.returncode}:\n"
                                 f"{(done.stderr + done.stdout).strip()[-3000:]}")
        return done

    def port(self, service: str, port: int) -> str:
        """host:port that `service`'s `port` is published on."""
        published = self.run("port", service, str(port)).stdout.strip()
        assert published, f"{service}:{port} is not published"
        return published

    def containers(self, service: str) -> list[str]:
        """Full ids of the service's running containers."""
        return self.run("ps", "-q", service).stdout.split()

    def exec(self, service: str, *args: str, timeout: float = 60) -> str:
        return self.run("exec", "-T", service, *args, timeout=timeout).stdout

    def logs(self, tail: int = 60) -> str:
        return self.run("logs", "--no-color", "--tail", str(tail), check=False, timeout=60).stdout

    def down(self) -> None:
        """Containers, networks and named volumes of this project; images stay cached."""
        self.run("down", "--volumes", "--remove-orphans", "--timeout", "5", check=False, timeout=180)
