"""Low-cardinality labels from free-text columns, as SQL CASE expressions (no per-row Python).

Webhook outcomes and run details are sentences ("task 7 created (backend)", "model error: ...");
a label must take few values, so each is reduced to a class by its leading words. The patterns
follow what coordinator/webhooks and workers/pipeline.py write; anything else is "other".
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, literal, not_, or_

# (class, LIKE pattern on the stored outcome) in order; the first match wins.
DELIVERY_CLASSES: tuple[tuple[str, str], ...] = (
    ("task_created", "task % created%"),
    ("recorded", "recorded%"),
    ("ignored", "ignored%"),
    ("untrusted", "untrusted%"),
    ("rejected", "rejected%"),
    ("pong", "pong%"),
    ("received", "received%"),
)
# Failed runs whose detail starts so are model errors (the pipeline's RunFailed for model_error).
MODEL_ERROR_PREFIX = "model error:%"
# Sandbox failures (SandboxUnavailable, SandboxError) name the sandbox or bubblewrap; a failing
# setup command quotes the repository's own output, which may say anything, so it is excluded.
SANDBOX_PATTERNS = ("%sandbox%", "%bubblewrap%")
NOT_SANDBOX_PREFIXES = ("setup command failed%", "model %", "clone failed%")


def delivery_class(outcome: ColumnElement[Any]) -> ColumnElement[str]:
    """The class of a webhook delivery's outcome text."""
    return case(*((outcome.like(pattern), literal(name)) for name, pattern in DELIVERY_CLASSES),
                else_=literal("other"))


def is_model_error(detail: ColumnElement[Any]) -> ColumnElement[bool]:
    return detail.like(MODEL_ERROR_PREFIX)


def is_sandbox_error(detail: ColumnElement[Any]) -> ColumnElement[bool]:
    lowered = func.lower(detail)
    return and_(or_(*(lowered.like(pattern) for pattern in SANDBOX_PATTERNS)),
                not_(or_(*(lowered.like(prefix) for prefix in NOT_SANDBOX_PREFIXES))))


def run_error(outcome: ColumnElement[Any], detail: ColumnElement[Any]) -> ColumnElement[str]:
    """"model", "sandbox" or "" for a run, from its outcome and detail."""
    failed = outcome == "failed"
    return case((and_(failed, is_model_error(detail)), literal("model")),
                (and_(failed, is_sandbox_error(detail)), literal("sandbox")),
                else_=literal(""))


# What a waiting task waits for, by the leading words of tasks.wait_reason (coordinator/limits.py,
# coordinator/dependencies.py, workers/overlap.py write them); anything else is "other".
WAIT_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("limit", ("repository ", "installation ")),
    ("quota", ("requester ",)),
    ("dependency", ("blocked by ", "depends on ")),
    ("overlap", ("overlaps ",)),
)
WAIT_KIND_NAMES = (*(kind for kind, _ in WAIT_KINDS), "other")


def wait_kind(reason: str | None) -> str:
    """limit, quota, dependency, overlap or other: a label with few values for a free-text reason."""
    for kind, prefixes in WAIT_KINDS:
        if (reason or "").startswith(prefixes):
            return kind
    return "other"
