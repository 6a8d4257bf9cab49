"""The compose deployment for real: built, started, migrated, health-checked, turning a signed webhook
into a PR on the local forge, scaled, and surviving a worker container killed mid-task."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.forge.local import LocalForge
from common.settings import Settings
from tests.deploy.docker_support import (
    LOCAL_BASE,
    ROOT,
    Compose,
    bridge_gateway,
    build_image,
    docker,
    docker_unavailable,
)
from tests.fakes.anthropic_server import (
    DEFAULT_KEY,
    FakeAnthropic,
    _handler_for,
    tool_use,
)
from tests.sample_repo import ISSUE_BODY, ISSUE_TITLE, fixing_script, write_sample
from tests.support import headers, labeled_issue, wait_for

# a first run builds three images (about 3 minutes here) before the stack's 2 minutes
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
REPO = "acme/widgets"
IMAGE = "forgecrew-test/forgecrew:local"
POSTGRES_IMAGE = "forgecrew-test/postgres:local"
REDIS_IMAGE = "forgecrew-test/redis:local"
FORGECREW_UID = 10001  # compose/Dockerfile's user
WEBHOOK_SECRET = secrets.token_hex(16)
API_TOKEN = secrets.token_hex(16)
FLOWER_PASSWORD = secrets.token_hex(16)


class HostFakeAnthropic(FakeAnthropic):
    """The scripted Messages API on an address the containers reach (the host's docker0 address)."""

    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host

    def start(self) -> HostFakeAnthropic:
        import threading

        self._server = ThreadingHTTPServer((self.host, 0), _handler_for(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                         name="fake-anthropic", daemon=True).start()
        return self


@pytest.fixture(scope="module")
def images() -> None:
    reason = docker_unavailable(LOCAL_BASE)
    if reason:
        print(f"skipping the compose deployment test: {reason}")
        pytest.skip(reason)
    base = {"BASE_IMAGE": LOCAL_BASE}
    build_image(IMAGE, ROOT, dockerfile=ROOT / "compose" / "Dockerfile", build_args=base)
    build_image(POSTGRES_IMAGE, ROOT / "compose" / "images" / "postgres", build_args=base)
    build_image(REDIS_IMAGE, ROOT / "compose" / "images" / "redis", build_args=base)


@pytest.fixture
def forge_dir(images: None, tmp_path: Path) -> Path:
    """A local forge with the sample repository and two issues, owned by the containers' user."""
    root = tmp_path / "forge"
    forge = LocalForge(Settings(forge="local", local_forge_root=root, home=tmp_path / "home"))
    forge.create_repo(REPO, write_sample(tmp_path / "sample"))
    forge.create_issue(REPO, 1, ISSUE_TITLE, ISSUE_BODY)
    forge.create_issue(REPO, 2, "add() still subtracts on the slow path", ISSUE_BODY)
    owner = f"{FORGECREW_UID}:{FORGECREW_UID}"
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", owner, str(root)], check=True)
    else:  # a member of the docker group: chown through a container
        docker("run", "--rm", "--user", "0", "--entrypoint", "chown", "-v", f"{root}:/forge", IMAGE, "-R", owner, "/forge")
    return root


@pytest.fixture
def model() -> Iterator[HostFakeAnthropic]:
    with HostFakeAnthropic(bridge_gateway()) as server:
        yield server


@pytest.fixture
def stack(images: None, forge_dir: Path, model: HostFakeAnthropic, tmp_path: Path) -> Iterator[Compose]:
    port = model.base_url.rsplit(":", 1)[1]
    env_file = tmp_path / "test.env"
    env_file.write_text("\n".join([
        f"APP_IMAGE={IMAGE}", f"POSTGRES_IMAGE={POSTGRES_IMAGE}", f"REDIS_IMAGE={REDIS_IMAGE}",
        f"POSTGRES_PASSWORD={secrets.token_hex(16)}", f"REDIS_PASSWORD={secrets.token_hex(16)}",
        f"FORGECREW_WEBHOOK_SECRET={WEBHOOK_SECRET}", f"FORGECREW_API_TOKEN={API_TOKEN}",
        f"FORGECREW_FLOWER_PASSWORD={FLOWER_PASSWORD}", f"FORGECREW_ANTHROPIC_API_KEY={DEFAULT_KEY}",
        "FORGECREW_FORGE=local", "FORGECREW_REPO_ALLOWLIST=acme/*", "COORDINATOR_PROCESSES=1",
        "HTTP_PORT=", "FLOWER_PORT=",  # ephemeral: the host's 8000 and 5555 are taken
        f"TEST_FORGE_DIR={forge_dir}", f"TEST_MODEL_URL=http://host.docker.internal:{port}",
    ]) + "\n")
    compose = Compose([ROOT / "compose" / "docker-compose.yml", ROOT / "tests" / "deploy" / "compose.test.yml"],
                      env_file)
    try:
        yield compose
    except BaseException:
        print(compose.logs(tail=80))
        raise
    finally:
        compose.down()


def deliver(url: str, issue: int, title: str) -> httpx.Response:
    body = json.dumps(labeled_issue("forgecrew:backend", repo=REPO, number=issue, title=title,
                                    body=ISSUE_BODY)).encode()
    return httpx.post(f"{url}/webhooks/github", content=body, timeout=30,
                      headers=headers("issues", body, secret=WEBHOOK_SECRET))


def task(url: str, task_id: int) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {API_TOKEN}"},
                         timeout=10)
    response.raise_for_status()
    return dict(response.json())


def finished(url: str, task_id: int, timeout: float = 120) -> dict[str, Any]:
    return dict(wait_for(lambda: (t := task(url, task_id))["state"] in ("pr_open", "failed") and t,
                         timeout=timeout, interval=1, what=f"task {task_id} to finish"))


def health(compose: Compose, service: str) -> str:
    """Docker's verdict on the service's compose healthcheck."""
    [container] = compose.containers(service)
    return docker("inspect", "--format", "{{.State.Health.Status}}", container).stdout.strip()


def shown(compose: Compose, task_id: int) -> dict[str, Any]:
    """`forgecrew tasks show ID --json`, run in the coordinator's container."""
    return dict(json.loads(compose.exec("coordinator", "forgecrew", "tasks", "show", str(task_id), "--json")))


def branches(forge_dir: Path) -> list[str]:
    """Branches of the forge's bare repository (owned by the containers' user, hence safe.directory)."""
    done = subprocess.run(["git", "-c", "safe.directory=*", "--git-dir", str(forge_dir / f"{REPO}.git"),
                           "for-each-ref", "--format=%(refname:short)", "refs/heads"],
                          capture_output=True, text=True, check=True)
    return done.stdout.split()


def ready_workers(compose: Compose, service: str) -> list[str]:
    """Containers of `service` whose Celery worker said it is ready."""
    def said_ready(cid: str) -> bool:
        logs = docker("logs", cid)
        return " ready." in logs.stdout + logs.stderr

    return [cid for cid in compose.containers(service) if said_ready(cid)]


def test_a_webhook_becomes_a_pr_and_a_killed_worker_container_costs_nothing(
        stack: Compose, model: HostFakeAnthropic, forge_dir: Path) -> None:
    started = time.monotonic()
    stack.run("up", "-d", "--no-build", timeout=300)  # returns once migrate exited 0 and deps are healthy
    url = f"http://{stack.port('coordinator', 8000)}"
    wait_for(lambda: httpx.get(f"{url}/readyz", timeout=3).json()["ready"], timeout=60, what="coordinator ready")
    assert "database at" in stack.run("logs", "--no-color", "migrate").stdout
    specialties = ("backend", "frontend", "testing", "devops", "general")
    wait_for(lambda: all(ready_workers(stack, f"worker-{name}") for name in specialties), timeout=120,
             what="a worker of every specialty, each past its sandbox check")
    wait_for(lambda: all(health(stack, service) == "healthy" for service in ("coordinator", "flower")),
             timeout=60, what="coordinator and flower healthy")
    flower = f"http://{stack.port('flower', 5555)}"
    assert httpx.get(flower, timeout=10).status_code == 401  # behind its basic auth
    assert httpx.get(flower, auth=("forgecrew", FLOWER_PASSWORD), timeout=10).status_code == 200
    print(f"stack up and ready in {time.monotonic() - started:.1f}s")

    # 1. a signed webhook turns into a PR branch on the local forge
    model.add(*fixing_script())
    response = deliver(url, 1, ISSUE_TITLE)
    assert response.status_code == 202, response.text
    first = finished(url, response.json()["task_id"])
    assert first["state"] == "pr_open", first["failure_reason"]
    assert first["branch"] in branches(forge_dir)
    [pull] = LocalForge(Settings(forge="local", local_forge_root=forge_dir)).pull_requests(REPO)
    assert pull["url"] == first["pr_url"] and pull["branch"] == first["branch"]
    detail = shown(stack, first["id"])
    assert [run["sandbox"] for run in detail["runs"]] == ["bubblewrap"]
    print(f"webhook -> {first['pr_url']} on branch {first['branch']} at {time.monotonic() - started:.1f}s")

    # 2. two backend workers; the one that takes the next task is killed while the model thinks
    stack.run("up", "-d", "--no-build", "--scale", "worker-backend=2", timeout=300)
    wait_for(lambda: len(ready_workers(stack, "worker-backend")) == 2, timeout=90, what="two backend workers")
    calls_before = len(model.message_requests)
    model.add(dataclasses.replace(tool_use("list_files", {"path": "."}), delay=90), *fixing_script())
    response = deliver(url, 2, "add() still subtracts on the slow path")
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    wait_for(lambda: len(model.message_requests) > calls_before, timeout=60, what="the slow model call")
    owner = wait_for(lambda: task(url, task_id)["lease_owner"], timeout=10, what="the task's lease owner")
    host = owner.rsplit("@", 1)[1]  # backend@<container hostname>/pid<n>@<container hostname>
    [doomed] = [cid for cid in stack.containers("worker-backend") if cid.startswith(host)]
    docker("kill", doomed)
    print(f"killed worker container {doomed[:12]} holding task {task_id} at {time.monotonic() - started:.1f}s")

    second = finished(url, task_id, timeout=150)
    assert second["state"] == "pr_open", second["failure_reason"]
    detail = wait_for(lambda: (d := shown(stack, task_id))["runs"] and all(
        run["outcome"] for run in d["runs"]) and d, timeout=30, what="both runs' outcomes")  # written just after
    outcomes = [(run["attempt"], run["outcome"]) for run in detail["runs"]]
    assert detail["attempt"] == 2 and outcomes == [(1, "lost"), (2, "pr_open")], outcomes
    # `docker kill` counts as a manual stop, so unless-stopped leaves it down: the other worker took over
    assert docker("inspect", "--format", "{{.State.Running}}", doomed).stdout.strip() == "false"
    assert host in detail["runs"][0]["worker"] and host not in detail["runs"][1]["worker"]
    assert [b for b in branches(forge_dir) if b.startswith("forgecrew/issue-2-")] == [second["branch"]]
    pulls = LocalForge(Settings(forge="local", local_forge_root=forge_dir)).pull_requests(REPO)
    assert [p["branch"] for p in pulls] == [first["branch"], second["branch"]]
    print(f"task {task_id} finished once after the kill: {second['pr_url']} at {time.monotonic() - started:.1f}s")
