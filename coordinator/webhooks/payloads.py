"""The shape of the payload fields forgecrew reads, checked before any handler runs.

A validly signed delivery with a wrong shape (`repository` a string, `"number": "abc"`, a dict as
the title) is answered 400 and recorded as rejected, instead of failing deep in a handler. Fields
forgecrew does not read are not checked; handlers keep reading the payload itself.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
# An unpaired surrogate (a paired one is decoded into its character): JSON may escape one, UTF-8 cannot hold it.
_SURROGATE = re.compile("[\ud800-\udfff]")


# Bounds of the columns these land in (GitHub's own limits are far below): past them, a 400 and not a 500.
Login = Annotated[StrictStr, Field(max_length=100)]
RepoName = Annotated[StrictStr, Field(max_length=200)]
Number = Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]  # issue and pull request numbers: PostgreSQL integer
Id = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]  # GitHub's ids: PostgreSQL bigint


class MalformedPayload(ValueError):
    """The body is no JSON object, or a field forgecrew reads has the wrong type; the message says which."""


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Account(_Part):
    login: Login = ""
    type: StrictStr | None = None


class Repository(_Part):
    full_name: RepoName


class Installation(_Part):
    id: Id


class Label(_Part):
    name: StrictStr = ""


class Issue(_Part):
    number: Number
    title: StrictStr | None = None
    body: StrictStr | None = None
    state: StrictStr | None = None
    state_reason: StrictStr | None = None
    labels: list[Label] | None = None
    author_association: StrictStr | None = None
    user: Account | None = None
    pull_request: dict[str, Any] | None = None


class Branch(_Part):
    ref: StrictStr
    repo: Repository | None = None  # None when the fork it came from was deleted


class PullRequest(_Part):
    number: Number
    merged: StrictBool | None = None
    head: Branch | None = None
    body: StrictStr | None = None
    title: StrictStr | None = None


class Comment(_Part):
    """An issue comment or a pull request review comment."""

    id: Id
    body: StrictStr | None = None
    user: Account | None = None
    pull_request_review_id: Id | None = None


class Review(_Part):
    id: Id
    body: StrictStr | None = None
    state: StrictStr | None = None
    user: Account | None = None


class Envelope(_Part):
    """The top level of every event forgecrew handles."""

    action: StrictStr | None = None
    repository: Repository | None = None
    sender: Account | None = None
    installation: Installation | None = None
    issue: Issue | None = None
    pull_request: PullRequest | None = None
    label: Label | None = None
    comment: Comment | None = None
    review: Review | None = None
    number: Number | None = None
    hook_id: StrictInt | None = None


def parse_body(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The payload of a JSON or form-encoded (`payload=<json>`) delivery, checked against Envelope."""
    text = _json_text(body, content_type)
    try:
        payload = json.loads(text)
    except RecursionError:
        raise MalformedPayload("malformed JSON (nested too deeply)") from None
    except ValueError as exc:
        raise MalformedPayload(f"malformed JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise MalformedPayload("malformed JSON (payload is not a JSON object)")
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    if b"\\u" in raw or b"\xed" in raw:  # only an escape (or raw surrogate bytes) can carry either
        check_text(payload)
    check_shape(payload)
    return payload


def check_text(payload: Any) -> None:
    """Refuse text PostgreSQL cannot store: NUL, or an unpaired surrogate (not UTF-8). GitHub sends neither."""
    pending = [payload]
    while pending:  # not recursive: a payload may nest deeper than Python's stack
        value = pending.pop()
        if isinstance(value, str):
            if "\x00" in value or _SURROGATE.search(value):
                raise MalformedPayload("text with a NUL character or an unpaired UTF-16 surrogate, which GitHub "
                                       "never sends")
        elif isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)


def check_shape(payload: dict[str, Any]) -> None:
    """Raise MalformedPayload naming the first fields whose type is wrong."""
    try:
        Envelope.model_validate(payload)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()[:3]]
        raise MalformedPayload("unexpected payload shape (" + "; ".join(problems) + ")") from None
    except RecursionError:
        raise MalformedPayload("unexpected payload shape (nested too deeply)") from None


def _json_text(body: bytes, content_type: str | None) -> str | bytes:
    """GitHub sends JSON as the body, or (the webhook's other content type) form-encoded as `payload`."""
    if (content_type or "").split(";")[0].strip().lower() != FORM_CONTENT_TYPE:
        return body
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedPayload(f"malformed form body ({exc})") from None
    values = fields.get("payload")
    if not values or len(values) != 1:
        raise MalformedPayload("form-encoded delivery without exactly one `payload` field")
    return values[0]
