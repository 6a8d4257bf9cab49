"""Which forgecrew messages a Redis broker still holds, so the reconciler resends only lost ones."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from celery import Celery
from kombu.transport.redis import Channel as RedisChannel

from common.celery_app import MESSAGE_ID_PREFIX

# LRANGE in pages, so a long backlog is not one huge reply.
PAGE = 500


def held_message_ids(app: Celery, queues: Iterable[str]) -> set[str] | None:
    """Ids of forgecrew messages waiting in `queues` or delivered and not yet acked.

    None when the broker cannot be inspected without consuming (AMQP): the caller falls back
    to an age rule. Broker errors propagate.
    """
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        if not isinstance(channel, RedisChannel):
            return None
        # The client applies the transport's global_keyprefix, as kombu's own commands do.
        with channel.conn_or_acquire() as client:
            raw = [*_queued(channel, client, queues), *_unacked(channel, client)]
    return {ident for ident in map(_message_id, raw) if ident and ident.startswith(MESSAGE_ID_PREFIX)}


def _queued(channel: RedisChannel, client: Any, queues: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Messages still in the queues' lists: one list per priority step, as kombu names them."""
    for queue in sorted(set(queues)):
        for key in {channel._q_for_pri(queue, step) for step in channel.priority_steps}:
            # LPUSH adds at the head and BRPOP takes from the tail, so paging from the head
            # may see a message twice but never skips one.
            start = 0
            while page := client.lrange(key, start, start + PAGE - 1):
                yield from (_loads(item) for item in page)
                start += PAGE


def _unacked(channel: RedisChannel, client: Any) -> Iterator[dict[str, Any]]:
    """Messages a worker took and has not acked (reserved or running, acks_late)."""
    for _tag, value in client.hscan_iter(channel.unacked_key, count=PAGE):
        entry = _loads(value)  # [message, exchange, routing_key]
        if isinstance(entry, list) and entry:
            yield entry[0]


def _loads(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _message_id(message: Any) -> str | None:
    """Celery's task id: in the headers (protocol 2), else the correlation id."""
    if not isinstance(message, dict):
        return None
    headers = message.get("headers") or {}
    properties = message.get("properties") or {}
    ident = headers.get("id") or properties.get("correlation_id")
    return ident if isinstance(ident, str) else None
