"""ansible/ for real: lint, syntax, then a cluster of systemd containers converged, re-converged with
nothing changed, turning a signed webhook into a pull request on the right worker host, and grown
by a third worker host with one more run of the playbook."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy import ansible_support as hosts
from tests.deploy.ansible_support import ANSIBLE_DIR, Cluster, Relay, port_of, run_playbook, write_inventory

pytestmark = pytest.mark.integration
REASON = hosts.why_not_runnable()
needs_hosts = pytest.mark.skipif(REASON is not None, reason=f"Ansible tests cannot run here: {REASON}")
if REASON is not None:
    print(f"\ntests/deploy/test_ansible.py: skipped: {REASON}")

REPO = "Codertocat/Hello-World"  # the repository of GitHub's example payloads
TOKEN = "ghp_ansibleTestTokenForTheFakeGitHub0123"
REDIS_PASSWORD = "redis-pass-7f3a9c"
DATABASE_PASSWORD = "db-pass-41e8b2"
# what a sandboxed command would need to steal from its worker host
PROBE = "cat /etc/forgecrew/forgecrew.toml; cat /proc/1/environ; ls /var/lib/forgecrew /opt/forgecrew; id; true"


def lint_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "ANSIBLE_NOCOLOR": "1",
            "NO_COLOR": "1", "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg")}


@pytest.mark.skipif(not hosts.ansible_tool("ansible-lint").exists(), reason="ansible-lint is not installed")
def test_ansible_lint_is_clean_offline(tmp_path: Path) -> None:
    done = subprocess.run([str(hosts.ansible_tool("ansible-lint")), "--offline", "--profile", "production"],
                          cwd=ANSIBLE_DIR, capture_output=True, text=True, timeout=300, env=lint_env(tmp_path))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "Passed" in done.stdout + done.stderr


@pytest.mark.skipif(not hosts.ansible_tool("ansible-playbook").exists(), reason="ansible is not installed")
def test_the_playbook_passes_its_syntax_check(tmp_path: Path) -> None:
    done = subprocess.run([str(hosts.ansible_tool("ansible-playbook")), "-i", "inventory.example.yml", "site.yml",
                           "--syntax-check"], cwd=ANSIBLE_DIR, capture_output=True, text=True, timeout=120,
                          env=lint_env(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_example_inventory_names_only_known_specialties() -> None:
    from common.specialties import Specialty

    inventory = yaml.safe_load((ANSIBLE_DIR / "inventory.example.yml").read_text())
    groups = inventory["all"]["children"]
    assert {"coordinator", "broker", "database", "flower", "workers"} <= set(groups)
    specialties = {name.removeprefix("workers_") for name in groups["workers"]["children"]}
    assert specialties == {item.value for item in Specialty}


def forgecrew(cluster: Cluster, host: str, *args: str) -> Any:
    """`forgecrew ... --json` on a host, through the command the role installs, as the forgecrew user."""
    done = cluster.exec(host, "forgecrew", *args, "--json", check=False)
    assert done.returncode == 0, f"forgecrew {' '.join(args)} on {host}: {done.stderr[-2000:]}"
    return json.loads(done.stdout)


def wait_until(predicate: Any, *, timeout: float, what: str, interval: float = 1.0) -> Any:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except AssertionError as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}: last={last!r}")


def worker_names(cluster: Cluster, coordinator: str) -> set[str]:
    return {worker["name"] for worker in forgecrew(cluster, coordinator, "workers")}


def build_wheel(out: Path) -> Path:
    subprocess.run([str(hosts.ansible_tool("pip")), "wheel", "--no-deps", "--quiet", "-w", str(out),
                    str(ANSIBLE_DIR.parent)], check=True, capture_output=True, timeout=300)
    [wheel] = out.glob("forgecrew-*.whl")
    return wheel


def cluster_vars(wheel: Path, github_url: str, git_url: str, model_url: str) -> dict[str, Any]:
    from tests.fakes.anthropic_server import DEFAULT_KEY
    from tests.support import SECRET

    return {
        "ansible_python_interpreter": "/usr/bin/python3",
        "forgecrew_common_wheel": str(wheel),
        "forgecrew_redis_password": REDIS_PASSWORD, "forgecrew_common_broker_password": REDIS_PASSWORD,
        "forgecrew_postgresql_password": DATABASE_PASSWORD, "forgecrew_common_database_password": DATABASE_PASSWORD,
        "forgecrew_common_webhook_secret": SECRET, "forgecrew_common_api_token": "api-token-5c1d0e9a",
        "forgecrew_common_flower_password": "flower-pass-93b7e2", "forgecrew_common_github_token": TOKEN,
        "forgecrew_common_anthropic_api_key": DEFAULT_KEY,
        "forgecrew_common_settings": {
            "forge": "github", "github_api_url": github_url, "github_write_interval_seconds": 0,
            "clone_url_template": f"{git_url}/{{full_name}}.git", "anthropic_base_url": model_url,
            "repo_allowlist": ["Codertocat/*"], "command_sandbox": "bubblewrap", "worker_concurrency": 2,
            "workspace_pool_size": 0, "lease_seconds": 10, "reaper_interval_seconds": 2,
        },
    }


@needs_hosts
@pytest.mark.timeout(1500)
def test_a_converged_cluster_turns_a_webhook_into_a_pr_and_takes_a_new_worker_host(tmp_path: Path) -> None:
    from common.forge.local import LocalForge
    from common.settings import Settings
    from tests.fakes.anthropic_server import FakeAnthropic, tool_use
    from tests.fakes.git_http import FakeGitHTTP
    from tests.fakes.github_server import FakeGitHub
    from tests.sample_repo import ISSUE_BODY, ISSUE_TITLE, fixing_script, last_tool_result, write_sample
    from tests.support import headers, labeled_issue

    timings: dict[str, float] = {}
    started = time.monotonic()
    image = hosts.host_image()
    wheel = build_wheel(tmp_path / "dist")
    timings["image and wheel"] = time.monotonic() - started
    git_root = tmp_path / "git"
    LocalForge(Settings(local_forge_root=git_root, home=tmp_path / "home")).create_repo(
        REPO, write_sample(tmp_path / "sample"))
    cluster = Cluster()
    relays: list[Relay] = []
    with FakeGitHub() as github, FakeGitHTTP(git_root) as git, FakeAnthropic() as model:
        try:
            cluster.create_network()
            names = {short: cluster.start_host(short, image) for short in ("coord", "w1", "w2")}
            coordinator, backend, frontend = names["coord"], names["w1"], names["w2"]
            for name in names.values():
                cluster.wait_booted(name)
            # the fakes listen on 127.0.0.1; the hosts reach them through relays on the gateway address
            relays = [Relay(cluster.gateway, port_of(url)) for url in (github.api_url, git.url, model.base_url)]
            github.api_url = github.web_url = relays[0].url  # the links in its answers lead to the relay too
            github.add_token(TOKEN)
            git.add_token(TOKEN)
            github.add_repo(REPO)
            github.add_issue(REPO, 1, ISSUE_TITLE, ISSUE_BODY, labels=("forgecrew:backend",))
            probed: list[str] = []

            def after_probe(request: Any) -> Any:
                probed.append(last_tool_result(request))
                return fixing_script()[0]

            model.add(tool_use("run_command", {"command": PROBE}), after_probe, *fixing_script()[1:])

            inventory = tmp_path / "inventory.json"
            groups = {"coordinator": [coordinator], "broker": [coordinator], "database": [coordinator],
                      "flower": [coordinator], "workers_backend": [backend], "workers_frontend": [frontend]}
            variables = cluster_vars(wheel, relays[0].url, relays[1].url, relays[2].url)
            write_inventory(inventory, groups, variables)

            first = run_playbook(inventory)
            timings["converge 1"] = first.seconds
            assert first.returncode == 0, first.output[-6000:]
            print(f"\nconverge 1: {first.seconds:.0f}s, changed {first.changed()}")

            second = run_playbook(inventory)
            timings["converge 2"] = second.seconds
            assert second.returncode == 0, second.output[-6000:]
            print(f"converge 2: {second.seconds:.0f}s, changed {second.changed()}")
            assert set(second.changed().values()) == {0}, "\n".join(second.changed_tasks())

            # what the roles left on the hosts
            for name in names.values():
                mode = cluster.exec(name, "stat", "-c", "%a %U", "/etc/forgecrew/forgecrew.toml").stdout.strip()
                assert mode == "600 forgecrew", (name, mode)
            wanted = {f"backend@{backend}", f"frontend@{frontend}"}
            wait_until(lambda: wanted <= worker_names(cluster, coordinator), timeout=90, what=f"workers {wanted}")
            for unit in ("forgecrew-coordinator", "forgecrew-reconciler", "forgecrew-flower", "redis-server",
                         "postgresql@15-main"):
                assert cluster.exec(coordinator, "systemctl", "is-active", unit).stdout.strip() == "active", unit
            flower = f"http://{cluster.address(coordinator)}:5555/"
            assert httpx.get(flower, timeout=10).status_code == 401
            assert httpx.get(flower, auth=("forgecrew", "flower-pass-93b7e2"), timeout=10).status_code == 200

            # a signed webhook to the coordinator host becomes a PR from the backend host
            data = labeled_issue("forgecrew:backend", title=ISSUE_TITLE, body=ISSUE_BODY)
            body = json.dumps(data).encode()
            webhook_at = time.monotonic()
            response = httpx.post(f"http://{cluster.address(coordinator)}:8000/webhooks/github", content=body,
                                  headers=headers("issues", body), timeout=30)
            assert response.status_code == 202, response.text
            task_id = response.json()["task_id"]

            def finished() -> Any:
                task = forgecrew(cluster, coordinator, "tasks", "show", str(task_id))
                return task if task["state"] in ("pr_open", "failed") else None

            task = wait_until(finished, timeout=240, what=f"task {task_id} to open its PR", interval=2)
            timings["webhook to PR"] = time.monotonic() - webhook_at
            shown = cluster.exec(coordinator, "forgecrew", "tasks", "show", str(task_id)).stdout
            print(f"webhook to PR: {timings['webhook to PR']:.0f}s\n{shown}")
            assert task["state"] == "pr_open", shown
            [claim] = [event["actor"] for event in task["events"] if event["to_state"] == "running"]
            assert claim.startswith(f"backend@{backend}/") and claim.endswith(f"@{backend}"), claim
            [pr] = github.pulls(REPO)
            assert pr.head == task["branch"] and task["pr_url"].endswith(f"/pull/{pr.number}")
            assert "Fixes #1" in pr.body and "passed" in pr.body
            assert github.violations == []
            # the sandbox on the worker host ran the probe and found none of the host's secrets
            assert probed and "uid=" in probed[0], probed
            for secret in (TOKEN, REDIS_PASSWORD, DATABASE_PASSWORD, variables["forgecrew_common_anthropic_api_key"]):
                assert secret not in probed[0]
            branch = subprocess.run(["git", "--git-dir", str(git_root / f"{REPO}.git"), "show",
                                     f"{task['branch']}:calc.py"], capture_output=True, text=True, check=True)
            assert "return a + b" in branch.stdout

            # a third worker host: added to the inventory, one run of the playbook, and it is online
            names["w3"] = testing = cluster.start_host("w3", image)
            cluster.wait_booted(testing)
            groups["workers_testing"] = [testing]
            write_inventory(inventory, groups, variables)
            third = run_playbook(inventory)
            timings["converge 3 (new host)"] = third.seconds
            assert third.returncode == 0, third.output[-6000:]
            changed = third.changed()
            print(f"converge 3: {third.seconds:.0f}s, changed {changed}")
            assert changed[testing] > 0 and all(changed[name] == 0 for name in (coordinator, backend, frontend)), \
                "\n".join(third.changed_tasks())
            everyone = wanted | {f"testing@{testing}"}
            online = wait_until(lambda: everyone <= worker_names(cluster, coordinator) and
                                cluster.exec(coordinator, "forgecrew", "workers").stdout,
                                timeout=90, what=f"workers {everyone}")
            print(f"forgecrew workers on {coordinator}:\n{online}")

            # draining a host: its workers stop (finishing what they run) and stay stopped
            drained = run_playbook(inventory, "--limit", frontend, "-e", "forgecrew_worker_drain=true")
            timings["drain one host"] = drained.seconds
            assert drained.returncode == 0, drained.output[-6000:]
            assert cluster.exec(frontend, "systemctl", "is-enabled", "forgecrew-worker@frontend",
                                check=False).stdout.strip() == "disabled"
            wait_until(lambda: f"frontend@{frontend}" not in worker_names(cluster, coordinator), timeout=60,
                       what=f"frontend@{frontend} to leave")
            print(f"drain {frontend}: {drained.seconds:.0f}s, changed {drained.changed()}")
        finally:
            for relay in relays:
                relay.close()
            cluster.destroy()
            timings["total"] = time.monotonic() - started
            print("timings: " + ", ".join(f"{what} {seconds:.0f}s" for what, seconds in timings.items()))
