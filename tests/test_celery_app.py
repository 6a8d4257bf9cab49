"""The Celery configuration each broker gets."""

from __future__ import annotations

from common.celery_app import make_celery
from common.settings import Settings


def test_redis_connections_are_health_checked_and_kept_alive() -> None:
    options = make_celery(Settings(broker_url="redis://127.0.0.1:6379/0")).conf.broker_transport_options
    assert options["health_check_interval"] > 0 and options["socket_keepalive"] is True
    assert options["visibility_timeout"] > Settings().default_time_limit


def test_amqp_gets_heartbeats_not_redis_options() -> None:
    app = make_celery(Settings(broker_url="amqp://guest:guest@127.0.0.1:5672//"))
    assert app.conf.broker_heartbeat == 30
    assert "health_check_interval" not in app.conf.broker_transport_options
    assert "socket_keepalive" not in app.conf.broker_transport_options
