"""POST /webhooks/github: verify, parse, deduplicate, route, record, then dispatch."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from common.db import FROZEN_NOW, clock_sql, clock_value, insert_for
from common.models import WebhookDelivery, utcnow
from coordinator.services import Services
from coordinator.webhooks.payloads import MalformedPayload, parse_body
from coordinator.webhooks.router import Delivery, Outcome
from coordinator.webhooks.signature import verify

log = logging.getLogger(__name__)
api = APIRouter()

# Outcome of a delivery refused before any handler ran; its redelivery (same id) is handled afresh.
REJECTED = "rejected: "
# The database cannot be reached (down, restarting, pool exhausted): answered 503, so GitHub records
# a failed delivery that can be redelivered once it is back.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout)
DATABASE_RETRY_AFTER_SECONDS = 30


class BodyTooLarge(Exception):
    pass


class DuplicateDelivery(Exception):
    """GitHub sent this delivery id before (a redelivery); it was handled then."""


def get_services(request: Request) -> Services:
    return request.app.state.services


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    dispatch_task_id: int | None = None
    send: Any = None  # the prepared send of that task (coordinator.sender.Send)
    command_id: int | None = None  # a comment command to carry out after the commit
    followup_id: int | None = None  # a follow-up to check and start after the commit
    release_repo: str | None = None  # a repository whose waiting tasks may go now (a blocker merged or closed)
    triage_id: int | None = None  # a pending task for LLM triage to classify and send after the commit


async def read_capped(request: Request, limit: int) -> bytes:
    """The raw body, refusing to buffer more than `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


@api.post("/webhooks/github", status_code=202)
async def github_webhook(
    request: Request, background: BackgroundTasks, services: Annotated[Services, Depends(get_services)]
) -> JSONResponse:
    settings = services.settings
    try:
        body = await read_capped(request, settings.max_webhook_bytes)
    except BodyTooLarge:
        return JSONResponse({"error": f"body larger than {settings.max_webhook_bytes} bytes"}, status_code=413)
    if not verify(settings.secret("webhook_secret"), body, request.headers.get("x-hub-signature-256")):
        log.warning("webhook with a missing or wrong signature from %s", request.client)
        return JSONResponse({"error": "missing or invalid X-Hub-Signature-256"}, status_code=401)
    try:
        answer = await request.app.state.intake.process(dict(request.headers), body)
    except DATABASE_UNAVAILABLE as exc:
        log.warning("delivery %s not recorded: the database is unavailable (%s)",
                    request.headers.get("x-github-delivery"), str(exc).splitlines()[0])
        return JSONResponse({"error": "database unavailable; the delivery was not recorded, redeliver it later"},
                            status_code=503, headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)})
    except Exception:  # the outermost handler: log with context, answer 500 so GitHub may redeliver
        log.exception("delivery %s (%s) failed; nothing was recorded", request.headers.get("x-github-delivery"),
                      request.headers.get("x-github-event"))
        return JSONResponse({"error": "internal error; the delivery was not recorded"}, status_code=500)
    if answer.send is not None:
        # committed: the sender thread publishes it and records the send in a batch. Not a background
        # task of the response, which would hold this connection's next request until it is done.
        services.sender.submit(answer.send)
    elif answer.triage_id is not None:  # LLM triage asks its model off the request path, then sends it
        services.triage.submit(answer.triage_id)
    elif answer.dispatch_task_id is not None:
        background.add_task(services.dispatcher.dispatch, answer.dispatch_task_id)
    if answer.command_id is not None:
        request.app.state.commands.submit(answer.command_id)
    if answer.followup_id is not None:
        request.app.state.followups.submit(answer.followup_id)
    if answer.release_repo is not None:  # after the commit, or the scheduler would not see the cleared rows
        background.add_task(services.scheduler.release, repo=answer.release_repo)
    return JSONResponse(answer.body, status_code=answer.status)


def process_delivery(services: Services, headers: dict[str, str], body: bytes, *,
                     session: Session | None = None) -> Answer:
    """Everything after the signature check, in `session`'s transaction (default: one of its own).

    A new task costs four statements: the delivery row, the task, its two events (one round
    trip) and the delivery's outcome.
    """
    if session is None:
        with services.db.session() as own:
            return process_delivery(services, headers, body, session=own)
    event = headers.get("x-github-event", "").strip()
    delivery_id = headers.get("x-github-delivery", "").strip()
    if not event or not delivery_id:
        return Answer(400, {"error": "X-GitHub-Event and X-GitHub-Delivery headers are required"})
    try:
        payload = parse_body(body, headers.get("content-type"))
    except MalformedPayload as exc:
        _record_only(session, delivery_id, event, None, {}, Outcome(f"{REJECTED}{exc}"))
        return Answer(400, {"error": str(exc)})
    action = payload.get("action") if isinstance(payload.get("action"), str) else None
    try:
        outcome = _handle(services, session, delivery_id, event, action, payload)
    except DuplicateDelivery:
        return Answer(200, {"status": "duplicate", "delivery": delivery_id})
    log.info("delivery %s %s.%s: %s", delivery_id, event, action, outcome.description)
    return Answer(
        202 if outcome.dispatch else 200,
        {"status": outcome.description, "task_id": outcome.task_id, "delivery": delivery_id},
        outcome.task_id if outcome.dispatch else None,
        outcome.extra.get("send"),
        outcome.extra.get("command_id"),
        outcome.extra.get("followup_id"),
        outcome.extra.get("release_repo"),
        triage_id=outcome.extra.get("triage_id"),
    )


def _handle(services: Services, session: Session, delivery_id: str, event: str, action: str | None,
            payload: dict[str, Any]) -> Outcome:
    values = _delivery_values(delivery_id, event, action, payload)
    values["payload"] = json.dumps(payload)  # kept for `forgecrew webhook replay`
    row_id = _claim_delivery(session, values)
    delivery = Delivery(services.settings, session, delivery_id, event, action, payload)
    outcome = services.router.dispatch(delivery)  # which ignores bots, but where a handler welcomes them
    _set_outcome(session, row_id, outcome)
    return outcome


def _record_only(session: Session, delivery_id: str, event: str, action: str | None,
                 payload: dict[str, Any], outcome: Outcome) -> None:
    values = _delivery_values(delivery_id, event, action, payload)
    values["outcome"] = outcome.description
    try:
        _claim_delivery(session, values)
    except DuplicateDelivery:
        pass


def _claim_delivery(session: Session, values: dict[str, Any]) -> int:
    """The id of the row to record this delivery on: a new one, or the row of its earlier copy that was rejected.

    The insert comes first and skips a conflicting delivery id (ON CONFLICT DO NOTHING, so a
    redelivery logs no error in the database and keeps its connection); it also reads the
    database's clock once for the whole transaction. A rejected delivery ran no handler, so its
    redelivery (GitHub's "Redeliver", or a sender that fixed its payload) is no duplicate: it
    takes that row over, locked, so two redeliveries racing end with one handled and one duplicate.
    """
    connection = session.connection()
    inserted = connection.execute(_insert_delivery(connection.dialect.name), values).first()
    if inserted is not None:
        session.info[FROZEN_NOW] = clock_value(inserted[1])
        return int(inserted[0])
    rejected = session.scalar(
        select(WebhookDelivery.id)
        .where(WebhookDelivery.delivery_id == values["delivery_id"], WebhookDelivery.outcome.startswith(REJECTED))
        .with_for_update()
    )
    if rejected is None:
        raise DuplicateDelivery(values["delivery_id"])
    session.execute(update(WebhookDelivery).where(WebhookDelivery.id == rejected)
                    .values(task_id=None, **values).execution_options(synchronize_session=False))
    return int(rejected)


def _set_outcome(session: Session, row_id: int, outcome: Outcome) -> None:
    session.connection().execute(_SET_OUTCOME, {"row_id": row_id, "outcome": outcome.description,
                                                "task_id": outcome.task_id})


@cache
def _insert_delivery(dialect: str) -> Any:
    """Built once per dialect and run with the values as parameters, so its compiled form is reused."""
    table = WebhookDelivery.__table__
    return insert_for(dialect)(table).on_conflict_do_nothing(index_elements=["delivery_id"]).returning(
        table.c.id, clock_sql(dialect))


_SET_OUTCOME = (update(WebhookDelivery.__table__).where(WebhookDelivery.__table__.c.id == bindparam("row_id"))
                .values(outcome=bindparam("outcome"), task_id=bindparam("task_id")))


def _delivery_values(delivery_id: str, event: str, action: str | None, payload: dict[str, Any]) -> dict[str, Any]:
    repo = (payload.get("repository") or {}).get("full_name") if isinstance(payload.get("repository"), dict) else None
    sender = (payload.get("sender") or {}).get("login") if isinstance(payload.get("sender"), dict) else None
    return {"delivery_id": delivery_id[:100], "event": event[:100], "action": action and action[:100],
            "repo": repo, "sender": sender, "outcome": "received", "received_at": utcnow(), "payload": None}
