"""Wait a bounded time for the broker at start: a server that cannot reach it says so instead of retrying for ever."""

from __future__ import annotations

import logging
import time

from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url

from common.celery_app import make_celery
from common.errors import SettingsError
from common.settings import Settings

log = logging.getLogger(__name__)
RETRY_INTERVAL = 0.5


def wait_for_broker(settings: Settings, timeout: float | None = None) -> None:
    """Return once the broker answers; raise SettingsError naming FORGECREW_BROKER_URL after `timeout` seconds.

    `timeout` defaults to settings.broker_start_timeout_seconds. Only the start is bounded: once a
    server runs, Celery reconnects for ever (a broker restart must not stop the workers).
    """
    timeout = settings.broker_start_timeout_seconds if timeout is None else timeout
    deadline = time.monotonic() + timeout
    app = make_celery(settings)
    attempts = 0
    while True:
        attempts += 1
        reason = _try_connect(app)
        if reason is None:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if attempts == 1:
            log.debug("waiting up to %gs for the broker at %s (%s)", timeout, _shown(settings), reason)
        time.sleep(min(RETRY_INTERVAL, left))
    if settings.uses_embedded_broker:
        raise SettingsError(f"no broker answers on {settings.state_home.broker_socket} (the default, embedded broker "
                            f"that `forgecrew up` runs in FORGECREW_HOME={settings.home}): start `forgecrew up`, "
                            "or set FORGECREW_BROKER_URL to your Redis or RabbitMQ")
    raise SettingsError(f"cannot reach the broker at FORGECREW_BROKER_URL={_shown(settings)} within {timeout:g}s "
                        f"({reason}); is it running?")


def _try_connect(app) -> str | None:  # type: ignore[no-untyped-def]
    """None when one connection attempt succeeds, else why it failed, in one line."""
    with app.connection_for_write() as connection:
        errors = (OperationalError, OSError, *connection.connection_errors)
        try:
            connection.connect()  # one attempt; the redis transport PINGs when it opens a channel
        except errors as exc:
            return " ".join(f"{type(exc).__name__}: {exc}".split())
    return None


def _shown(settings: Settings) -> str:
    """The URL without its password."""
    return maybe_sanitize_url(settings.broker_url)
