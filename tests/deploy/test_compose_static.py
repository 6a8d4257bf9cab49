"""The compose files checked without Docker: valid against the Compose Specification, and every
`forgecrew` command and FORGECREW_* variable they use is one the CLI and the settings know."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml

from common.settings import Settings
from common.specialties import queue_names
from coordinator.cli import load_commands

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"
TEST_OVERRIDE = ROOT / "tests" / "deploy" / "compose.test.yml"
ENV_EXAMPLE = ROOT / "compose" / ".env.example"
FILES = [COMPOSE_FILE, TEST_OVERRIDE]
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
SETTING = re.compile(r"\bFORGECREW_[A-Z0-9_]+\b")


def schema() -> dict[str, Any]:
    fixtures = os.environ.get("FORGECREW_FIXTURES")
    candidates = ([Path(fixtures) / "compose-spec"] if fixtures else []) + [Path(__file__).parent / "compose-spec"]
    path = next(folder / "compose-spec.json" for folder in candidates if (folder / "compose-spec.json").is_file())
    return dict(yaml.safe_load(path.read_text()))


def load(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def interpolate(value: str) -> str:
    """What docker-compose would make of `value` with nothing set: defaults, and a stand-in for required ones."""
    return INTERPOLATION.sub(lambda m: m.group(3) if m.group(2) in ("-", ":-") else "set-by-env", value)


def forgecrew_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services running the forgecrew image (built from compose/Dockerfile)."""
    return {name: service for name, service in compose["services"].items()
            if service.get("build", {}).get("dockerfile") == "compose/Dockerfile"}


def leaf(args: list[str]) -> tuple[click.Command, list[str]]:
    """The CLI command `forgecrew ARGS` names, and the arguments left for it."""
    command: click.Command = load_commands()
    while isinstance(command, click.Group):
        assert args and args[0] in command.commands, f"`forgecrew {' '.join(args)}`: no such command"
        command, args = command.commands[args[0]], args[1:]
    return command, args


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_valid_against_the_compose_specification(path: Path) -> None:
    jsonschema.Draft7Validator(schema()).validate(load(path))


def test_every_service_command_parses_with_the_cli() -> None:
    services = forgecrew_services(load(COMPOSE_FILE))
    assert set(services) >= {"migrate", "coordinator", "reconciler", "flower"}
    for name, service in services.items():
        args = [interpolate(str(word)) for word in service["command"]]
        command, rest = leaf(args)
        try:  # parses options and their values (types, choices, ranges) as the real start would
            command.make_context(command.name or name, rest)
        except click.ClickException as exc:
            raise AssertionError(f"service {name}: `forgecrew {' '.join(args)}`: {exc.format_message()}") from None


def test_one_worker_service_per_specialty() -> None:
    services = forgecrew_services(load(COMPOSE_FILE))
    workers = {name: service["command"] for name, service in services.items() if service["command"][0] == "worker"}
    settings = Settings()
    assert {name.removeprefix("worker-") for name in workers} == set(queue_names(settings))
    for name, command in workers.items():
        assert command == ["worker", "--specialty", name.removeprefix("worker-")], name
        assert "container_name" not in services[name] and "ports" not in services[name], f"{name} must scale"


def test_every_forgecrew_variable_is_a_setting() -> None:
    fields = set(Settings.model_fields)
    used = {variable for path in [*FILES, ENV_EXAMPLE] for variable in SETTING.findall(path.read_text())}
    for path in FILES:
        for service in load(path)["services"].values():
            environment = service.get("environment") or {}
            assert isinstance(environment, dict), "environment is written as a mapping"
            used |= {key for key in environment if key.startswith("FORGECREW_")}
    unknown = sorted(variable for variable in used if variable.removeprefix("FORGECREW_").lower() not in fields)
    assert len(used) > 10 and not unknown, f"no such settings: {unknown}"


def test_required_secrets_fail_at_once_and_none_is_committed() -> None:
    compose = load(COMPOSE_FILE)
    required = {m.group(1) for m in INTERPOLATION.finditer(COMPOSE_FILE.read_text()) if m.group(2) == ":?"}
    assert required == {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "FORGECREW_WEBHOOK_SECRET", "FORGECREW_API_TOKEN",
                        "FORGECREW_FLOWER_PASSWORD", "FORGECREW_ANTHROPIC_API_KEY"}
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line and not line.startswith("#"))
    assert all(example.get(name) == "" for name in required), "the example leaves every secret to fill in"
    assert "compose/.env" in (ROOT / ".gitignore").read_text().splitlines()
    assert "compose/.env" in (ROOT / ".dockerignore").read_text().splitlines()
    for name, service in compose["services"].items():
        assert "restart" in service, f"{name} has no restart policy"


def test_everything_waits_for_what_it_needs() -> None:
    services = load(COMPOSE_FILE)["services"]
    for name in ("postgres", "redis", "coordinator", "flower"):
        assert services[name]["healthcheck"]["test"], name
    for name, service in forgecrew_services({"services": services}).items():
        if name == "migrate":
            assert service["depends_on"] == {"postgres": {"condition": "service_healthy"}}
            continue
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name
        assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}, name
        assert service["depends_on"]["redis"] == {"condition": "service_healthy"}, name


def test_workers_keep_the_sandbox_without_being_privileged() -> None:
    services = forgecrew_services(load(COMPOSE_FILE))
    for name, service in services.items():
        assert not service.get("privileged"), name
        if service["command"][0] != "worker":
            assert "cap_add" not in service and "security_opt" not in service, f"{name} needs no privileges"
            continue
        assert service["cap_drop"] == ["ALL"] and set(service["cap_add"]) == {"SYS_ADMIN", "SETUID", "SETGID",
                                                                                "SETPCAP"}, name
        assert service["entrypoint"] == ["forgecrew-worker-entrypoint"], name
        assert "workspaces:/var/lib/forgecrew/workspaces" in service["volumes"], name


def docker_compose_config(tmp_path: Path, env: dict[str, str], *files: Path) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` (no daemon needed): docker-compose 1.x's own reading of the files."""
    env_file = tmp_path / "check.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in env.items()))
    args = ["docker-compose", "--project-directory", str(COMPOSE_FILE.parent), "--env-file", str(env_file)]
    for path in files:
        args += ["--file", str(path)]
    clean = {name: value for name, value in os.environ.items() if name in ("PATH", "HOME", "LANG")}
    return subprocess.run([*args, "config", "-q"], capture_output=True, text=True, env=clean, timeout=60,
                          check=False)


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_docker_compose_reads_the_files_and_refuses_a_missing_secret(tmp_path: Path) -> None:
    secrets = {name: "0123abcd" for name in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "FORGECREW_WEBHOOK_SECRET",
                                              "FORGECREW_API_TOKEN", "FORGECREW_FLOWER_PASSWORD",
                                              "FORGECREW_ANTHROPIC_API_KEY")}
    done = docker_compose_config(tmp_path, secrets, COMPOSE_FILE)
    assert done.returncode == 0, done.stderr
    test_env = {**secrets, "TEST_FORGE_DIR": str(tmp_path), "TEST_MODEL_URL": "http://127.0.0.1:9"}
    done = docker_compose_config(tmp_path, test_env, COMPOSE_FILE, TEST_OVERRIDE)
    assert done.returncode == 0, done.stderr
    without = {name: value for name, value in secrets.items() if name != "FORGECREW_WEBHOOK_SECRET"}
    done = docker_compose_config(tmp_path, without, COMPOSE_FILE)
    assert done.returncode != 0 and "set FORGECREW_WEBHOOK_SECRET in compose/.env" in done.stderr, done.stderr


def test_every_worker_takes_the_autoscale_range_and_each_specialty_its_own() -> None:
    services = forgecrew_services(load(COMPOSE_FILE))
    workers = {name.removeprefix("worker-"): service for name, service in services.items()
               if service["command"][0] == "worker"}
    for specialty, service in workers.items():
        environment = service["environment"]
        assert interpolate(environment["FORGECREW_WORKER_AUTOSCALE"]) == "", specialty  # off unless set
        own = f"WORKER_AUTOSCALE_{specialty.upper().replace('-', '_')}"
        assert environment[own] == f"${{{own}:-}}", specialty
    example = ENV_EXAMPLE.read_text()
    assert "# FORGECREW_WORKER_AUTOSCALE=" in example and "# WORKER_AUTOSCALE_BACKEND=" in example
    assert "## Autoscaling" in (ROOT / "compose" / "README.md").read_text()


def entrypoint_env(tmp_path: Path, env: dict[str, str], *args: str) -> dict[str, str]:
    """The environment compose/worker-entrypoint hands to forgecrew, run as a non-root user with stub tools."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    (stubs / "id").write_text("#!/bin/sh\necho 1000\n")
    (stubs / "tini").write_text("#!/bin/sh\nexec env\n")  # `tini -- forgecrew ...`: print what it would get
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    done = subprocess.run(["sh", str(ROOT / "compose" / "worker-entrypoint"), *args], capture_output=True, text=True,
                          env={"PATH": f"{stubs}:/usr/bin:/bin", **env}, timeout=30, check=True)
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def test_the_entrypoint_picks_its_specialty_s_range_and_drops_an_empty_one(tmp_path: Path) -> None:
    both = {"FORGECREW_WORKER_AUTOSCALE": "4,1", "WORKER_AUTOSCALE_BACKEND": "12,2", "WORKER_AUTOSCALE_TESTING": ""}
    assert entrypoint_env(tmp_path, both, "worker", "--specialty", "backend")["FORGECREW_WORKER_AUTOSCALE"] == "12,2"
    assert entrypoint_env(tmp_path, both, "worker", "--specialty", "testing")["FORGECREW_WORKER_AUTOSCALE"] == "4,1"
    empty = {"FORGECREW_WORKER_AUTOSCALE": "", "WORKER_AUTOSCALE_BACKEND": ""}
    assert "FORGECREW_WORKER_AUTOSCALE" not in entrypoint_env(tmp_path, empty, "worker", "--specialty", "backend")
