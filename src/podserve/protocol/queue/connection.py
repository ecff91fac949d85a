"""Connecting to RabbitMQ: robust, named connections and URLs safe to log.

The connection name (shown by ``rabbitmqctl list_connections`` and the management UI) says
which worker or client a connection belongs to; aio-pika ignores ``client_properties`` when
given a URL, so the name travels as aiormq's ``?name=`` query parameter instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from pydantic import SecretStr
from yarl import URL

from podserve.errors import ConfigurationError, PodserveError
from podserve.protocol.queue.errors import broker_errors

CONNECT_TIMEOUT_S = 15.0


def reveal(url: SecretStr | str) -> str:
    """The URL itself: only to hand to the client library, never to print."""
    return url.get_secret_value() if isinstance(url, SecretStr) else url


@contextlib.contextmanager
def scrubbed(url: SecretStr | str) -> Iterator[None]:
    """Errors raised inside, with the URL's password replaced by ``***``.

    The broker's and the client library's error texts may quote the URL; what podserve
    raises or logs never carries the password.
    """
    try:
        yield
    except PodserveError as exc:
        try:
            secret = URL(reveal(url)).password
        except ValueError:
            secret = None
        if secret and secret in exc.message:
            raise type(exc)(exc.message.replace(secret, "***")) from None
        raise


def redact(url: SecretStr | str) -> str:
    """The AMQP URL without its password, for logs and error messages."""
    url = reveal(url)
    try:
        parsed = URL(url)
    except ValueError:
        return "<invalid URL>"
    return str(parsed.with_password("***")) if parsed.password else str(parsed)


def named_url(url: SecretStr | str, name: str) -> URL:
    """The URL, checked, with the connection name (unless the URL names it already)."""
    url = reveal(url)
    try:
        parsed = URL(url)
    except ValueError:
        raise ConfigurationError(f"invalid AMQP URL {redact(url)!r}") from None
    if parsed.scheme not in ("amqp", "amqps"):
        raise ConfigurationError(f"AMQP URL must start with amqp:// or amqps://: {redact(url)}")
    return parsed.update_query(name=name) if "name" not in parsed.query else parsed


async def connect(url: SecretStr | str, name: str) -> AbstractRobustConnection:
    """A robust connection (reconnects, restores channels, queues and consumers): the client's.

    The worker manages its own reconnection (:mod:`podserve.protocol.queue.session`).
    """
    named = named_url(url, name)
    with scrubbed(url), broker_errors(f"connecting to RabbitMQ at {redact(url)}"):
        return await aio_pika.connect_robust(named, timeout=CONNECT_TIMEOUT_S)
