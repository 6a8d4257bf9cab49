"""Hypothesis over POST /webhooks/github: recorded GitHub payloads, mutated, signed, sent to the real app.

Every delivery goes through the FastAPI app on the test PostgreSQL database and Redis broker, as
tests/test_webhooks.py sends them. Whatever arrives, the answer is never a 5xx (the database is
up), and a task appears only for a valid labelled issue of an allowed repository; a wrong
signature records nothing at all.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from common.db import Database
from common.models import Task, WebhookDelivery
from common.settings import Settings
from common.specialties import ROUTE_LABEL_PREFIX, TRIGGER_LABEL, profiles
from coordinator.app import create_app
from coordinator.webhooks.payloads import MalformedPayload, check_shape
from coordinator.webhooks.signature import sign
from tests.fuzz.budget import fuzz
from tests.support import SECRET, WEBHOOKS, labeled_issue, payload

pytestmark = pytest.mark.integration

BODY_LIMIT = 256 * 1024  # the fuzzed app's FORGECREW_MAX_WEBHOOK_BYTES, so oversized bodies stay cheap to send
ALLOWLIST = ["Codertocat/*", "acme/*"]
STARTING_ACTIONS = ("opened", "reopened", "labeled")
_deliveries = itertools.count()
_issues = itertools.count(100_000)  # a fresh issue per example: an issue's second task would be a duplicate


# --- what is sent -------------------------------------------------------------------------------

def recorded_payloads() -> list[tuple[str, dict[str, Any]]]:
    """(event, payload) for every recorded delivery, plus variants that would start work or run a command."""
    found = [(path.parent.name, json.loads(path.read_text())) for path in sorted(WEBHOOKS.glob("*/*.json"))]
    assert len(found) >= 30, f"expected the recorded payloads under {WEBHOOKS}"
    comment = payload("issue_comment", "created")
    commands = []
    for body in ("/forgecrew status", "@forgecrew please add tests", "/forgecrew route backend"):
        variant = copy.deepcopy(comment)
        variant["comment"]["body"] = body
        commands.append(("issue_comment", variant))
    return [*found, ("issues", labeled_issue()), ("issues", labeled_issue("forgecrew:backend")), *commands]


PAYLOADS = recorded_payloads()
# Drawn as often as all the rest, so that many mutations still start work.
TRIGGERS = [(event, document) for event, document in PAYLOADS
            if event == "issues" and document.get("label", {}).get("name", "").startswith("forgecrew")]
EVENTS = sorted({event for event, _ in PAYLOADS})

# Text a hostile or careless sender puts in names, titles and comments.
NASTY = ["", " ", "\x00", "a\x00b", "\u202etxt.exe", "\u200b\u200d\ufeff", "\x1b[31mred\x1b[0m", "\r\n\r\n",
         "\ud800", "x\udfffy", "🦀" * 50, "ｆｏｒｇｅｃｒｅｗ", "forgecrew\u200b", "/forgecrew retry", "@forgecrew do it",
         "```\n/forgecrew cancel\n```", "'; DROP TABLE tasks; --", "${{ secrets.TOKEN }}", "../../etc/passwd",
         "%s%n%x", "\\u0000", "null", "A" * 70_000, "é" * 10_000]
hostile_text = st.one_of(
    st.sampled_from(NASTY),
    st.text(max_size=200),
    st.text(alphabet=st.characters(codec=None, categories=["Cc", "Cf", "Cs", "Zl", "Zp", "Mn"]), max_size=50),
    st.builds(lambda ch, n: ch * n, st.sampled_from(["x", "\u202e", "`", ">", "\x00"]),
              st.integers(1_000, 30_000)),
)
hostile_value = st.one_of(
    hostile_text,
    st.none(), st.booleans(),
    st.integers(), st.sampled_from([0, -1, 2**31, 2**63, 2**64 + 1, -(2**70), 10**30]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1.5, -0.0, 1e308]),
    st.lists(st.integers(), max_size=3), st.just([{}]), st.just({}),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
TEXT_FIELDS = [("label", "name"), ("issue", "title"), ("issue", "body"), ("comment", "body"), ("sender", "login"),
               ("repository", "full_name"), ("repository", "name"), ("pull_request", "title"),
               ("pull_request", "body"), ("review", "body"), ("issue", "user", "login"), ("action",)]


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value inside a JSON document (keys and list indexes)."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))


def set_at(document: Any, path: tuple[Any, ...], value: Any, *, delete: bool = False) -> Any:
    """A copy of `document` with the value at `path` replaced (or deleted); the root itself may be replaced."""
    if not path:
        return value
    document = copy.deepcopy(document)
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    if delete and isinstance(parent, dict):
        parent.pop(path[-1], None)
    elif delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return document


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, dict[str, Any] | Any]:
    """A recorded payload with one to four fields replaced, deleted or given another type."""
    event, document = draw(st.one_of(st.sampled_from(PAYLOADS), st.sampled_from(TRIGGERS)))
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):  # a field forgecrew reads, given hostile text or a wrong type
            path = draw(st.sampled_from(TEXT_FIELDS))
            if not isinstance(document, dict) or not _parent_exists(document, path):
                continue
        else:  # anywhere at all, the root included
            path = draw(st.sampled_from(list(paths(document))))
        delete = bool(path) and draw(st.integers(0, 4)) == 0
        document = set_at(document, path, draw(hostile_value), delete=delete)
    if draw(st.integers(0, 9)) == 0:  # the header names another event than the body is
        event = draw(st.sampled_from(EVENTS))
    return event, document


def _parent_exists(document: dict[str, Any], path: tuple[Any, ...]) -> bool:
    parent: Any = document
    for part in path[:-1]:
        if not isinstance(parent, dict) or part not in parent:
            return False
        parent = parent[part]
    return isinstance(parent, dict)


def fresh_issue(document: Any) -> None:
    """Give the recorded issue a number of its own, so a still-valid delivery is no duplicate of an earlier one."""
    issue = document.get("issue") if isinstance(document, dict) else None
    if isinstance(issue, dict) and issue.get("number") == 1 and type(issue["number"]) is int:
        issue["number"] = next(_issues)


def encode(document: Any) -> bytes:
    """JSON as GitHub sends it; a lone surrogate goes out escaped (\\ud800), as any JSON encoder may write it."""
    return json.dumps(document).encode()


def signed(event: str, body: bytes, **extra: str) -> dict[str, str]:
    return {"X-GitHub-Event": event, "X-GitHub-Delivery": f"fuzz-{next(_deliveries)}",
            "X-Hub-Signature-256": sign(SECRET, body), "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/fuzz", **extra}


# --- what must hold -----------------------------------------------------------------------------

@pytest.fixture
def hook_client(make_settings: Callable[..., Settings], db: Database) -> Iterator[TestClient]:
    """The real app; the local forge, so a comment command's access check never reaches GitHub."""
    settings = make_settings(forge="local", max_webhook_bytes=BODY_LIMIT, repo_allowlist=ALLOWLIST)
    with TestClient(create_app(settings, run_reconciler=False)) as client:
        yield client


def counts(db: Database) -> tuple[int, int]:
    with db.session() as session:
        return (session.scalar(select(func.count()).select_from(Task)) or 0,
                session.scalar(select(func.count()).select_from(WebhookDelivery)) or 0)


def new_tasks(db: Database, after: int) -> list[Task]:
    with db.session() as session:
        return list(session.scalars(select(Task).offset(after).order_by(Task.id)))


def may_start_task(settings: Settings, event: str, document: Any) -> bool:
    """The conditions DESIGN.md sets on work from a webhook, stated apart from the handlers."""
    if event != "issues" or not isinstance(document, dict) or document.get("action") not in STARTING_ACTIONS:
        return False
    try:
        check_shape(document)
    except MalformedPayload:
        return False
    repo, issue, sender = document.get("repository"), document.get("issue"), document.get("sender") or {}
    if not repo or not isinstance(issue, dict) or "pull_request" in issue or issue.get("state") == "closed":
        return False
    if not any(fnmatch.fnmatchcase(repo["full_name"].lower(), pattern.lower()) for pattern in ALLOWLIST):
        return False
    if sender.get("type") == "Bot" or sender.get("login", "").endswith("[bot]"):
        return False
    triggers = {TRIGGER_LABEL, *(ROUTE_LABEL_PREFIX + name for name in profiles(settings))}
    if document["action"] == "labeled":
        return (document.get("label") or {}).get("name") in triggers
    names = {label.get("name") for label in issue.get("labels") or []}
    return bool(names & triggers) and str(issue.get("author_association", "NONE")).upper() in {
        "OWNER", "MEMBER", "COLLABORATOR"}


def deliver(client: TestClient, body: bytes, headers: dict[str, str] | list[tuple[str, str]]) -> Any:
    """POST it; the app must answer (an exception escaping the app fails the test), never with a 5xx."""
    response = client.post("/webhooks/github", content=body, headers=headers)
    assert response.status_code < 500, (response.status_code, response.text[:500])
    assert client.app.state.services.sender.wait_idle()  # type: ignore[attr-defined]
    return response


SENT: dict[str, int] = {}


def tally(name: str) -> None:
    """Examples run per property, printed at the end of the module (run with -s to see them)."""
    SENT[name] = SENT.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def report_examples() -> Iterator[None]:
    yield
    print(f"\nwebhook fuzz examples: {SENT}")


@fuzz(500)
@given(case=mutated())
def test_a_mutated_payload_never_5xx_and_starts_work_only_when_valid(hook_client: TestClient, db: Database,
                                                                   case: tuple[str, Any]) -> None:
    event, document = case
    settings: Settings = hook_client.app.state.services.settings  # type: ignore[attr-defined]
    document = copy.deepcopy(document)
    fresh_issue(document)
    tasks_before, _ = counts(db)
    deliver(hook_client, encode(document), signed(event, encode(document)))
    created = new_tasks(db, tasks_before)
    tally("mutated")
    if created:
        tally("mutated, and still a valid labelled issue: task created")
        assert may_start_task(settings, event, document), f"a task from an invalid delivery: {event} {created}"
        [task] = created
        assert (task.repo, task.issue_number) == (document["repository"]["full_name"], document["issue"]["number"])


@fuzz(120)
@given(title=hostile_text, body=hostile_text, login=hostile_text,
       label=st.sampled_from([TRIGGER_LABEL, "forgecrew:backend", "forgecrew:testing"]))
def test_hostile_text_in_a_valid_labelled_issue_still_makes_one_task(hook_client: TestClient, db: Database,
                                                                     title: str, body: str, login: str,
                                                                     label: str) -> None:
    number = next(_issues)
    document = labeled_issue(label, number=number, title=title, body=body)
    document["sender"]["login"] = login.replace("[bot]", "")
    tasks_before, _ = counts(db)
    body = encode(document)
    response = deliver(hook_client, body, signed("issues", body))
    created = new_tasks(db, tasks_before)
    tally("hostile text")
    if response.status_code == 202:
        assert len(created) == 1 and created[0].issue_number == number
    else:  # refused as a whole (text PostgreSQL cannot store, a login past GitHub's length, too big): said so
        assert response.status_code in ((413,) if len(body) > BODY_LIMIT else (400,)), response.text[:300]
        assert created == [] and "error" in response.json()


CONTENT_TYPES = [None, "application/json", "application/json; charset=utf-8", "text/plain", "application/xml",
                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", "\x7f", "*/*"]
def _is_object(body: bytes) -> bool:
    """Random bytes or text can spell a JSON object (`{}`), which is a payload, not the case tested here."""
    try:
        return isinstance(json.loads(body), dict)
    except (ValueError, RecursionError):
        return False


not_a_payload = st.one_of(
    st.binary(max_size=2_000),
    st.text(max_size=500).map(str.encode),
    st.sampled_from([b"", b"null", b"[]", b"[1,2]", b'"issue"', b"42", b"true", b"{", b'{"action":', b"\xff\xfe{}",
                     b"NaN", b"[" * 100_000, b'{"a":' * 50_000, b"payload=", b"payload=%7B%7D&payload=%7B%7D",
                     b"payload=%ff", b"a=b", "payload=[]".encode()]),
    st.recursive(st.none() | st.integers() | st.text(max_size=10), lambda inner: st.lists(inner, max_size=3),
                 max_leaves=10).filter(lambda value: not isinstance(value, dict)).map(lambda v: json.dumps(v).encode()),
).filter(lambda body: not _is_object(body))


@fuzz(150)
@given(body=not_a_payload, content_type=st.sampled_from(CONTENT_TYPES), event=st.sampled_from(EVENTS))
def test_a_body_that_is_no_json_object_is_refused_with_400(hook_client: TestClient, db: Database, body: bytes,
                                                           content_type: str | None, event: str) -> None:
    headers = signed(event, body)
    if content_type is None:
        del headers["Content-Type"]
    else:
        headers["Content-Type"] = content_type
    tasks_before, _ = counts(db)
    response = deliver(hook_client, body, headers)
    tally("not a payload")
    assert response.status_code == 400, (response.status_code, response.text[:300])
    assert "error" in response.json() and new_tasks(db, tasks_before) == []


@fuzz(10)
@given(extra=st.integers(1, 3 * BODY_LIMIT), event=st.sampled_from(EVENTS))
def test_a_body_over_the_limit_is_413_and_records_nothing(hook_client: TestClient, db: Database, extra: int,
                                                          event: str) -> None:
    document = labeled_issue()
    document["issue"]["body"] = "x" * BODY_LIMIT
    body = encode(document)[: BODY_LIMIT + extra] if extra % 2 else encode(document) + b" " * extra
    before = counts(db)
    response = deliver(hook_client, body, signed(event, body))
    tally("oversized")
    assert response.status_code == 413 and str(BODY_LIMIT) in response.json()["error"]
    assert counts(db) == before


def bad_signatures(body: bytes) -> st.SearchStrategy[list[tuple[str, str]]]:
    """Signature headers that must not pass: missing, for another body or secret, malformed, repeated."""
    good = sign(SECRET, body)
    wrong = st.one_of(
        st.just(sign("not-the-secret", body)), st.just(sign(SECRET, body + b" "))
        , st.just(good[:-1]), st.just(good.upper()), st.just("sha1=" + good[7:]), st.just(good[7:]),
        st.just("sha256="), st.just(""), st.just(good + "0"), st.just(f"sha256={'0' * 64}"),
        st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=80),
    )
    return st.lists(wrong, max_size=3)


@fuzz(100)
@given(data=st.data(), case=mutated())
def test_a_wrong_or_missing_signature_is_401_and_records_nothing(hook_client: TestClient, db: Database,
                                                                 data: st.DataObject, case: tuple[str, Any]) -> None:
    event, document = case
    body = encode(document)
    signatures = data.draw(bad_signatures(body))
    headers = [(name, value) for name, value in signed(event, body).items() if name != "X-Hub-Signature-256"]
    headers += [("X-Hub-Signature-256", value) for value in signatures]
    before = counts(db)
    response = deliver(hook_client, body, headers)
    tally("bad signature")
    assert response.status_code == 401 and counts(db) == before


header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=300)


@fuzz(100)
@given(case=mutated(), event=st.one_of(st.none(), header_text), delivery=st.one_of(st.none(), header_text))
def test_unknown_events_and_odd_delivery_headers_never_5xx(hook_client: TestClient, db: Database,
                                                           case: tuple[str, Any], event: str | None,
                                                           delivery: str | None) -> None:
    _, document = case
    body = encode(document)
    headers = signed("placeholder", body)
    for name, value in (("X-GitHub-Event", event), ("X-GitHub-Delivery", delivery)):
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    tasks_before, _ = counts(db)
    response = deliver(hook_client, body, headers)
    tally("odd headers")
    if len(body) > BODY_LIMIT:  # the size is checked first, before any header
        assert response.status_code == 413
    elif not (event or "").strip() or not (delivery or "").strip():
        assert response.status_code == 400
    if event not in STARTING_ACTIONS and event != "issues":
        assert new_tasks(db, tasks_before) == []


def test_the_properties_see_every_recorded_event() -> None:
    """The strategies start from each recorded event, not a convenient few."""
    assert {"issues", "issue_comment", "pull_request", "pull_request_review", "pull_request_review_comment",
            "check_run", "check_suite", "status", "ping", "installation", "installation_repositories"} <= set(EVENTS)
