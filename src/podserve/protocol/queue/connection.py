"""Connecting to RabbitMQ: robust, named connections and URLs safe to log.

The connection name (shown by ``rabbitmqctl list_connections`` and the management UI) says
which worker or client a connection belongs to; aio-pika ignores ``client_properties`` when
given a URL, so the name travels as aiormq's ``?name=`` query parameter instead.
"""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from yarl import URL

from podserve.errors import ConfigurationError
from podserve.protocol.queue.errors import broker_errors

CONNECT_TIMEOUT_S = 15.0


def redact(url: str) -> str:
    """The AMQP URL without its password, for logs and error messages."""
    try:
        parsed = URL(url)
    except ValueError:
        return "<invalid URL>"
    return str(parsed.with_password("***")) if parsed.password else str(parsed)


def named_url(url: str, name: str) -> URL:
    """The URL, checked, with the connection name (unless the URL names it already)."""
    try:
        parsed = URL(url)
    except ValueError:
        raise ConfigurationError(f"invalid AMQP URL {redact(url)!r}") from None
    if parsed.scheme not in ("amqp", "amqps"):
        raise ConfigurationError(f"AMQP URL must start with amqp:// or amqps://: {redact(url)}")
    return parsed.update_query(name=name) if "name" not in parsed.query else parsed


async def connect(url: str, name: str) -> AbstractRobustConnection:
    """A robust connection (reconnects, restores channels, queues and consumers): the client's.

    The worker manages its own reconnection (:mod:`podserve.protocol.queue.session`).
    """
    named = named_url(url, name)
    with broker_errors(f"connecting to RabbitMQ at {redact(url)}"):
        return await aio_pika.connect_robust(named, timeout=CONNECT_TIMEOUT_S)
