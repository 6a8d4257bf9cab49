"""Access: the REST API and Flower refuse requests without credentials, and the coordinator refuses to
start with an empty or placeholder webhook secret.

The routes are read from the OpenAPI of the API's router (and checked against what the running app
serves), so a route added later is covered without editing a list. That comment commands run only
for people with write access is tested in tests/test_comment_commands.py (the permission check
against the fake GitHub, refusals and their answers); tests/fuzz/test_api_schema.py sends every
operation generated requests without the token.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from common.db import Database
from common.models import Task
from common.settings import Settings
from coordinator.api import PREFIX, api_router
from coordinator.app import create_app
from tests.conftest import settings_env
from tests.factories import make_task
from tests.support import Process, free_port, wait_for

pytestmark = pytest.mark.integration

TOKEN = "access-api-token-0123456789abcdef"
FLOWER_PASSWORD = "flower-access-0123456789abcdef"
START_BOUND = 30  # seconds for a coordinator to refuse and exit (it takes about two)


def api_operations() -> list[tuple[str, str]]:
    """(method, path) of every operation of the REST API, from its router's OpenAPI."""
    app = FastAPI()
    app.include_router(api_router())
    return sorted((method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item)


OPERATIONS = api_operations()
WRONG = [None, "Bearer wrong-token-0123456789", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN} extra", f"Token {TOKEN}",
         f"Basic {TOKEN}", "Bearer", "", f"bearer  {TOKEN}x"]


def concrete(path: str) -> str:
    """The path with its parameters filled in (a task that exists, so only the token can refuse)."""
    return re.sub(r"\{[^}]+\}", "1", path)


@pytest.fixture
def api(make_settings: Callable[..., Settings], db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(api_token=TOKEN, forge="local"), run_reconciler=False)) as client:
        yield client


def test_the_operations_are_every_one_the_app_serves(api: TestClient) -> None:
    served = sorted((method.upper(), path) for path, item in api.get("/openapi.json").json()["paths"].items()
                    for method in item if path.startswith(PREFIX))
    assert served == OPERATIONS and len(OPERATIONS) >= 6


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_every_operation_refuses_a_missing_or_wrong_token(api: TestClient, db: Database, method: str,
                                                          path: str) -> None:
    make_task(db)
    for authorization in WRONG:
        headers = {"Authorization": authorization} if authorization is not None else {}
        response = api.request(method, concrete(path), headers=headers, params={"token": TOKEN},
                               json={"repo": "acme/app", "title": "x"})
        assert response.status_code == 401, (authorization, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
    assert api.request(method, concrete(path), headers={"Authorization": f"Bearer {TOKEN}"},
                       json={"repo": "acme/app", "title": "x"}).status_code < 500  # the token itself is let in
    with db.session() as session:  # the refused calls changed nothing (the accepted one may have)
        assert session.get(Task, 1) is not None


def test_refused_writes_leave_no_trace(api: TestClient, db: Database) -> None:
    make_task(db)
    for method, path in OPERATIONS:
        if method == "POST":
            assert api.post(concrete(path), json={"repo": "acme/app", "title": "x"}).status_code == 401
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Task)) == 1
        assert session.get(Task, 1).state == "triaged"


# ---- Flower ------------------------------------------------------------------------------------

@pytest.fixture
def flower(make_settings: Callable[..., Settings], processes: list[Process], tmp_path: Path) -> str:
    """`forgecrew flower` as an operator starts it, its password in FORGECREW_FLOWER_PASSWORD."""
    port = free_port()
    env = settings_env(make_settings(flower_password=FLOWER_PASSWORD))
    proc = Process(["flower", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path / "flower.log")
    processes.append(proc)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: not proc.alive() or httpx.get(f"{url}/healthcheck", timeout=1).status_code < 500, timeout=60,
             what="Flower to answer")
    assert proc.alive(), proc.log()
    assert FLOWER_PASSWORD not in Path(f"/proc/{proc.popen.pid}/cmdline").read_bytes().decode(errors="replace")
    return url


@pytest.mark.parametrize("page", ["/", "/workers", "/tasks", "/api/workers", "/api/tasks", "/metrics"])
def test_flower_refuses_every_page_without_its_password(flower: str, page: str) -> None:
    for auth in (None, ("forgecrew", "wrong-password"), ("admin", FLOWER_PASSWORD), ("forgecrew", "")):
        response = httpx.get(flower + page, auth=auth, timeout=10)
        assert response.status_code == 401, (page, auth, response.status_code)
    assert httpx.get(flower + page, auth=("forgecrew", FLOWER_PASSWORD), timeout=10).status_code == 200


# ---- the webhook secret --------------------------------------------------------------------------

@pytest.mark.parametrize("secret", ["", "changeme", " ChangeMe ", "secret", "   ", "…", "<the webhook secret>"])
def test_the_coordinator_refuses_to_start_with_an_empty_or_placeholder_secret(
        make_settings: Callable[..., Settings], tmp_path: Path, secret: str) -> None:
    """There is no development mode that lets it run insecurely: `forgecrew up` generates a secret."""
    port = free_port()
    env = {**settings_env(make_settings()), "FORGECREW_WEBHOOK_SECRET": secret}
    proc = Process(["coordinator", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path / "coordinator.log")
    try:
        status = proc.popen.wait(timeout=START_BOUND)
    except subprocess.TimeoutExpired:
        status = None
    finally:
        proc.stop()
    log = proc.log()
    assert status is not None, f"still running after {START_BOUND}s with secret {secret!r}:\n{log[-3000:]}"
    assert status != 0 and "FORGECREW_WEBHOOK_SECRET" in log, log
    assert ("must be set" if secret == "" else "placeholder") in log, log
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)


def test_an_in_process_app_refuses_an_unset_secret_too(make_settings: Callable[..., Settings]) -> None:
    from common.errors import SettingsError

    for secret in (None, ""):
        with pytest.raises(SettingsError, match="FORGECREW_WEBHOOK_SECRET must be set"):
            create_app(make_settings(webhook_secret=secret), run_reconciler=False)


def test_a_real_secret_still_starts(make_settings: Callable[..., Settings], db: Database) -> None:
    """The counterpart of the refusals above: a random secret is accepted."""
    settings = make_settings(webhook_secret=os.urandom(16).hex())
    with TestClient(create_app(settings, run_reconciler=False)) as client:
        assert client.get("/healthz").status_code == 200
