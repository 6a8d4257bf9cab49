"""schemathesis against the coordinator's served OpenAPI: every REST operation, every generated request.

With the bearer token, positive cases (valid by the schema) and negative ones (invalid on purpose)
never get a 5xx, and each answer is one the schema documents: its status code, content type and
body. Without a token, every operation answers 401 whatever the request says.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import given
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from common.db import Database
from common.settings import Settings
from coordinator.api import PREFIX
from coordinator.app import create_app
from tests.fuzz.budget import fuzz

pytestmark = pytest.mark.integration

TOKEN = "fuzz-api-token-0123456789abcdef"
BASE_URL = "http://testserver"
# Per operation and mode. 6 operations x (2 modes x 25 + 10 unauthenticated) = 360 requests, ~20 s.
EXAMPLES = 25
UNAUTHENTICATED_EXAMPLES = 10
# The inspect broadcast of /api/v1/agents waits its whole `timeout` when no worker runs (no replies
# come); the schema allows 10 s. Positive cases keep their value's validity but wait at most this.
INSPECT_WAIT = 0.05


def no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """not_a_server_error, except the one 5xx the schema documents: 502 when the forge will not give
    the issue a submit names (here: the local forge has no such repository). That is upstream's
    answer passed on, not a failure of the coordinator's."""
    if (response.status_code == 502 and case.method.upper() == "POST" and case.path == f"{PREFIX}/tasks"
            and response.json().get("detail", "").startswith("the forge refused")):
        return None
    return not_a_server_error(ctx, response, case)


POSITIVE_CHECKS = [no_server_error, status_code_conformance, content_type_conformance,
                   response_schema_conformance]
NEGATIVE_CHECKS = [*POSITIVE_CHECKS, negative_data_rejection]


@pytest.fixture
def api_client(make_settings: Callable[..., Settings], db: Database) -> Iterator[TestClient]:
    """The real app on the test database; the local forge, so nothing reaches GitHub."""
    app = create_app(make_settings(api_token=TOKEN, forge="local"), run_reconciler=False)
    with TestClient(app) as client:
        yield client


@pytest.fixture
def api_schema(api_client: TestClient) -> Any:
    """The OpenAPI document the app serves, as schemathesis reads it."""
    response = api_client.get("/openapi.json")
    assert response.status_code == 200, response.text
    schema = schemathesis.openapi.from_dict(response.json())
    # The token is the test's to send (or withhold), not a parameter to fuzz; unknown query parameters
    # are ignored, as HTTP APIs conventionally do, so they are not generated as "invalid".
    schema.config.generation.update(with_security_parameters=False, allow_extra_parameters=False)
    return schema


def api_operations(schema: Any) -> list[Any]:
    """Every operation under the REST API's prefix (the webhook, health and metrics have their own tests)."""
    operations = [result.ok() for result in schema.get_all_operations()]
    found = [operation for operation in operations if operation.path.startswith(PREFIX)]
    assert len(found) >= 6, f"expected the REST API's operations in /openapi.json, found {found}"
    return found


def send(client: TestClient, case: Any, headers: dict[str, str]) -> Any:
    """Send a generated case through the app's own test client (so its lifespan is the fixture's)."""
    request = case.as_transport_kwargs(base_url=BASE_URL, headers=headers)
    body: dict[str, Any] = {}
    if "json" in request:
        body["json"] = request["json"]
    elif "data" in request:
        data = request["data"]
        body["content"] = data.encode() if isinstance(data, str) else data
    return client.request(request["method"], request["url"], headers=request["headers"],
                          params=request.get("params"), **body)


def bounded_wait(case: Any) -> None:
    """Keep /api/v1/agents' inspect wait short when the generated timeout is a valid one."""
    query = case.query or {}
    timeout = query.get("timeout")
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and 0 < timeout <= 10:
        query["timeout"] = min(timeout, INSPECT_WAIT)


def run_operation(client: TestClient, operation: Any, mode: GenerationMode, checks: list[Any],
                  headers: dict[str, str], stats: Counter[str]) -> None:
    @fuzz(EXAMPLES)
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        if mode is GenerationMode.POSITIVE:
            bounded_wait(case)
        response = send(client, case, headers)
        stats[f"{operation.method.upper()} {operation.path} {mode.value}"] += 1
        case.validate_response(response, checks=checks, headers=headers)

    check()


def test_every_operation_answers_as_its_schema_says_and_never_5xx(api_client: TestClient, api_schema: Any) -> None:
    stats: Counter[str] = Counter()
    started = time.monotonic()
    for operation in api_operations(api_schema):
        run_operation(api_client, operation, GenerationMode.POSITIVE, POSITIVE_CHECKS,
                      {"Authorization": f"Bearer {TOKEN}"}, stats)
        run_operation(api_client, operation, GenerationMode.NEGATIVE, NEGATIVE_CHECKS,
                      {"Authorization": f"Bearer {TOKEN}"}, stats)
    print(f"schemathesis: {sum(stats.values())} requests in {time.monotonic() - started:.1f}s: {dict(stats)}")
    assert all(count > 0 for count in stats.values())


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token-0123456789", "Basic Zm9yZ2VjcmV3OnB3",
                                           f"Bearer {TOKEN}x", "Bearer", f"bearer{TOKEN}"])
def test_every_operation_refuses_a_request_without_the_token(api_client: TestClient, api_schema: Any,
                                                             authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for operation in api_operations(api_schema):
        @fuzz(UNAUTHENTICATED_EXAMPLES)
        @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
        def refused(case: Any) -> None:
            bounded_wait(case)
            response = send(api_client, case, headers)
            assert response.status_code == 401, (operation.path, response.status_code, response.text)
            assert response.headers.get("www-authenticate") == "Bearer"
            assert "bearer token" in response.json()["detail"]

        refused()
