"""The Celery app and its queue topology, tuned for agent tasks that run 5 to 60 minutes."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from common.settings import Settings
from common.specialties import max_time_limit, queue_names, time_limits

RUN_TASK = "forgecrew.run_task"
MESSAGE_ID_PREFIX = "forgecrew-task-"
# A send retries once, briefly: a down broker must fail the send fast (the reconciler resends it).
RETRY_POLICY = {"max_retries": 1, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1}

# The broker must never hand a running task to a second worker: keep it invisible for longer
# than the longest hard limit, plus this margin for the worker to report and ack.
VISIBILITY_MARGIN_SECONDS = 600


def _queues(settings: Settings) -> list[Queue]:
    exchange = Exchange("forgecrew", type="direct")
    extras = _queue_extras(settings)
    return [Queue(name, exchange, routing_key=name, **extras) for name in queue_names(settings)]


def _queue_extras(settings: Settings) -> dict[str, Any]:
    if not _is_amqp(settings):
        return {}
    # RabbitMQ closes a channel whose delivery stays unacked past consumer_timeout (30 min by
    # default). With acks_late an agent task is unacked for its whole run, so give each queue a
    # per-queue timeout above the longest hard limit (RabbitMQ >= 3.11.15 honours x-consumer-timeout).
    timeout_ms = (max_time_limit(settings) + VISIBILITY_MARGIN_SECONDS) * 1000
    arguments: dict[str, Any] = {"x-consumer-timeout": timeout_ms}
    if settings.rabbitmq_priority_queues:  # opt-in: an existing queue cannot gain the argument (see Settings)
        arguments["x-max-priority"] = AMQP_MAX_PRIORITY
    return {"queue_arguments": arguments}


def _is_amqp(settings: Settings) -> bool:
    return settings.broker_url.startswith(("amqp", "pyamqp"))


def _is_redis(settings: Settings) -> bool:
    return settings.broker_url.startswith(("redis", "rediss", "sentinel"))


# Task priority (tasks.priority: -1 low, 0 normal, 1 high) as each broker orders messages.
# RabbitMQ: higher is delivered first, up to the queue's x-max-priority (small: each level costs).
AMQP_MAX_PRIORITY = 2
# kombu's Redis transport keeps one list per step and reads step 0 first: 0 is the HIGHEST.
REDIS_PRIORITY_STEPS = list(range(10))
REDIS_STEP_OF = {1: 0, 0: 5, -1: 9}
REDIS_SEP = ":"


def broker_priority(settings: Settings, priority: int) -> int:
    """The message priority that puts a task of `priority` ahead of lower ones on this broker."""
    priority = max(-1, min(1, priority))
    if _is_redis(settings):
        return REDIS_STEP_OF[priority]
    return priority + 1  # AMQP: 0 low, 1 normal, 2 high


def _transport_options(settings: Settings, visibility: int) -> dict[str, Any]:
    options: dict[str, Any] = {
        # Redis redelivers an unacked message after visibility_timeout even if its worker is
        # alive, so it must exceed the longest hard time limit (Celery's Redis caveat).
        "visibility_timeout": visibility,
        "socket_connect_timeout": settings.dispatch_timeout_seconds,
        "socket_timeout": max(settings.dispatch_timeout_seconds, 10),
    }
    if _is_redis(settings):
        options.update(
            # priorities (broker_priority): one list per step, named queue:step, read step 0 first;
            # a message without a step would land on step 0 (the highest), so every send sets one
            priority_steps=REDIS_PRIORITY_STEPS,
            sep=REDIS_SEP,
            queue_order_strategy="priority",
            # redis-py PINGs a connection idle for longer than this before using it, and kombu
            # drops a BRPOP or pub/sub connection whose reply is this overdue: a connection a NAT,
            # proxy or failover silently cut is replaced instead of hanging a publish or a worker.
            health_check_interval=25,
            # TCP keepalives keep idle connections' NAT/firewall mappings open and let the kernel
            # notice a peer that vanished without closing the connection.
            socket_keepalive=True,
            # kombu sweeps the unacked set for messages past the visibility timeout every
            # interval x throttle seconds (10 x 10 by default, so up to 100 s late): sweep every
            # 5 s instead, one cheap ZRANGE, so a dead worker's message is back on time.
            unacked_restore_interval=5,
            unacked_restore_throttle=1,
        )
    return options


def make_celery(settings: Settings) -> Celery:
    """A Celery app for these settings; tasks are registered by the worker side."""
    app = Celery("forgecrew", broker=settings.broker_url, set_as_current=False)
    visibility = max_time_limit(settings) + VISIBILITY_MARGIN_SECONDS
    app.conf.update(
        task_queues=_queues(settings),
        task_default_queue="general",
        # a send that names no priority (another canvas, a person's script) counts as normal
        task_default_priority=broker_priority(settings, 0),
        task_default_exchange="forgecrew",
        # Plain JSON values only cross the queue; the worker re-reads state from the database.
        task_serializer="json",
        accept_content=["json"],
        # Ack after the task finishes so a worker that dies mid-run leaves the message to be
        # redelivered; the database lease (not the broker) stops two runs at once.
        task_acks_late=True,
        # A pool child killed by SIGKILL/OOM rejects its message, which goes back on the queue at
        # once. That copy does not run the task again right away: the dead worker's lease is still
        # live, so claim() skips it. Once the lease expires the reaper requeues the task with a new
        # message; the attempt count (MAX_ATTEMPTS) bounds a poison task that kills its worker.
        task_reject_on_worker_lost=True,
        # One message per process at a time: a long agent task must not sit on reserved ones.
        worker_prefetch_multiplier=1,
        # With acks_late, tasks whose broker connection was lost are redelivered anyway, so
        # cancel the local copy rather than let two copies run.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Results live in PostgreSQL, not in Celery's result backend.
        task_ignore_result=True,
        # Events feed Flower: task-sent from the coordinator, the rest from workers.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        # Defaults; each send sets its specialty's own limits.
        task_soft_time_limit=settings.default_soft_time_limit,
        task_time_limit=max(settings.default_time_limit, settings.default_soft_time_limit + 30),
        broker_connection_retry_on_startup=True,
        # A running worker reconnects for ever (Celery's default gives up after 100 tries): a broker
        # restart must not stop it. The start is bounded by common.broker_check.wait_for_broker.
        broker_connection_max_retries=None,
        broker_connection_timeout=settings.dispatch_timeout_seconds,
        broker_transport_options=_transport_options(settings, visibility),
        # AMQP heartbeats: RabbitMQ and the worker each notice a dead connection within about
        # twice this. The Redis transport ignores it; see _transport_options for its checks.
        broker_heartbeat=30,
        worker_hijack_root_logger=False,
    )
    return app


def message_id(task_id: int, dispatch_number: int) -> str:
    """The Celery id of a task's n-th send: known in advance, so the broker can be asked for it."""
    return f"{MESSAGE_ID_PREFIX}{task_id}-{dispatch_number}"


def task_label(repo: str, issue_number: int | None, specialty: str, task_id: int) -> str:
    """How a task reads in Flower and worker logs: `acme/calc#12 backend`, not `forgecrew.run_task(5)`."""
    where = f"{repo}#{issue_number}" if issue_number else f"{repo} task {task_id}"
    return f"{where} {specialty}"


def send_run(app: Celery, settings: Settings, *, task_id: int, specialty: str, message: str,
             label: str | None = None, producer: Any = None, priority: int = 0) -> None:
    """Put a run of `task_id` on its specialty's queue, failing fast when the broker is down.

    `label` becomes the message's shadow name: what Flower, events and worker logs show. A
    `producer` held across several sends (app.producer_or_acquire()) saves a pool round per send.
    `priority` is the task's (-1 low, 0 normal, 1 high), mapped to the broker's by broker_priority.
    """
    soft, hard = time_limits(settings, specialty)
    app.send_task(
        RUN_TASK,
        kwargs={"task_id": task_id},
        shadow=label,
        task_id=message,
        queue=specialty,
        routing_key=specialty,
        soft_time_limit=soft,
        time_limit=hard,
        retry=True,
        retry_policy=RETRY_POLICY,
        producer=producer,
        priority=broker_priority(settings, priority),
    )
