"""Messages waiting on each specialty queue, read from the broker at scrape time."""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery
from kombu.exceptions import ChannelError
from kombu.transport.redis import Channel as RedisChannel


def queue_depths(app: Celery, queues: Iterable[str], *, timeout: float) -> dict[str, int]:
    """Waiting (not yet delivered) messages per queue; broker errors propagate to the caller.

    Redis: LLEN of each queue's priority lists, in one pipelined round trip. Other transports
    (RabbitMQ): a passive queue declare, which reports the count without consuming; a queue the
    broker does not have yet is left out.
    """
    names = sorted(set(queues))
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=timeout)
        channel = connection.default_channel
        if isinstance(channel, RedisChannel):
            return _redis_depths(channel, names)
        depths = {}
        for name in names:
            try:  # a refused passive declare closes its channel: one channel per queue
                with connection.channel() as queue_channel:
                    depths[name] = int(queue_channel.queue_declare(queue=name, passive=True).message_count)
            except ChannelError:
                continue
        return depths


def _redis_depths(channel: RedisChannel, names: list[str]) -> dict[str, int]:
    # kombu keeps one list per priority step; its key helper adds any global_keyprefix
    keys = {name: sorted({channel._q_for_pri(name, step) for step in channel.priority_steps}) for name in names}
    with channel.conn_or_acquire() as client:
        pipe = client.pipeline(transaction=False)
        for name in names:
            for key in keys[name]:
                pipe.llen(key)
        lengths = iter(pipe.execute())
    return {name: sum(next(lengths) for _ in keys[name]) for name in names}
