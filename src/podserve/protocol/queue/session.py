"""One AMQP connection of the worker with its channels: opened together, dead together.

The worker does not use aio-pika's *robust* connection. A robust connection reopens the same
channel objects on a new transport behind the caller's back, while every
:class:`~aio_pika.IncomingMessage` stays bound to the channel it arrived on: after a reconnect
an inference that was in flight would try to reply and ack on a channel the broker has already
forgotten (its deliveries were requeued the moment the connection dropped), and a channel
whose restore failed stayed closed for good. Instead a :class:`Session` is one plain
connection plus the channels the worker needs; when the connection or any of its channels
closes, the whole session is over, every delivery that came through it is forgotten, and the
worker opens a new session (:meth:`QueueWorker._supervise`).

::

    Session
      connection ──► declare channel (closed after declaring)
                 ──► consume channel: basic.qos, basic.consume on <queue>
                 ──► reply channel (publisher confirms): replies, DLQ copies
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractQueue
from pydantic import SecretStr

from podserve.errors import BrokerError, ConfigurationError, PodserveError
from podserve.protocol.queue.connection import CONNECT_TIMEOUT_S, named_url, scrubbed
from podserve.protocol.queue.errors import broker_errors
from podserve.protocol.queue.topology import Topology, declare

log = logging.getLogger(__name__)

RECONNECT_DELAYS_S = (0.5, 1.0, 2.0, 5.0)  # then every 5 s until the broker is back


class Session:
    """A connection, its consume and reply channels, and whether they are all still open."""

    def __init__(self, connection: AbstractConnection, number: int) -> None:
        self.connection = connection
        self.number = number  # 0 for the first session, then one more per reconnection
        self.ended = asyncio.Event()
        self.consume_channel: AbstractChannel | None = None
        self.reply_channel: AbstractChannel | None = None
        self.queue: AbstractQueue | None = None
        self.dlx: AbstractExchange | None = None
        self.results: AbstractExchange | None = None
        self.consumer_tag: str | None = None
        self._publisher: aiormq.Channel | None = None
        connection.close_callbacks.add(self._end)

    @property
    def alive(self) -> bool:
        return not self.ended.is_set()

    def _end(self, *_args: Any) -> None:
        self.ended.set()
        if self._publisher is not None:
            # aiormq fails the confirm of a publish cut short by the close, and nothing awaits
            # it any more (the delivery is forgotten): observe it so asyncio does not report
            # "Future exception was never retrieved".
            for confirm in list(self._publisher.confirmations.values()):
                confirm.add_done_callback(_observe)

    @classmethod
    async def open(
        cls,
        url: SecretStr | str,
        name: str,
        topology: Topology,
        results_exchange: str | None,
        number: int,
    ) -> Session:
        """Connect, declare, open the channels; raises BrokerError or ConfigurationError."""
        where = f"connecting to RabbitMQ for queue '{topology.queue}'"
        with scrubbed(url), broker_errors(where):
            connection = await aio_pika.connect(named_url(url, name), timeout=CONNECT_TIMEOUT_S)
        session = cls(connection, number)
        try:
            await session._open_channels(topology, results_exchange)
        except BaseException:
            await session.close()
            raise
        return session

    @classmethod
    async def reopen(
        cls,
        url: SecretStr | str,
        name: str,
        topology: Topology,
        results_exchange: str | None,
        number: int,
        stop: asyncio.Event,
    ) -> Session | None:
        """:meth:`open`, retried with backoff until it works, or None once ``stop`` is set."""
        attempt = 0
        while not stop.is_set():
            try:
                return await cls.open(url, name, topology, results_exchange, number)
            except PodserveError as exc:
                delay = RECONNECT_DELAYS_S[min(attempt, len(RECONNECT_DELAYS_S) - 1)]
                attempt += 1
                log.warning("reconnecting to RabbitMQ: %s; next try in %.1fs", exc, delay)
                await first_of(asyncio.sleep(delay), stop.wait())
        return None

    async def _open_channels(self, topology: Topology, results_exchange: str | None) -> None:
        with broker_errors(f"opening channels for queue '{topology.queue}'"):
            declaring = await self.connection.channel()
            try:
                await declare(declaring, topology)
            finally:
                with contextlib.suppress(Exception):
                    await declaring.close()
            consume = self.consume_channel = await self.connection.channel()
            reply = self.reply_channel = await self.connection.channel(publisher_confirms=True)
            for channel in (consume, reply):
                channel.close_callbacks.add(self._end)
            underlay = await reply.get_underlay_channel()
            self._publisher = underlay if isinstance(underlay, aiormq.Channel) else None
            self.queue = await consume.declare_queue(
                topology.queue, durable=True, arguments=topology.queue_arguments()
            )
            self.dlx = await reply.get_exchange(topology.dead_letter_exchange, ensure=False)
        if results_exchange:
            try:
                with broker_errors(f"looking up results exchange '{results_exchange}'"):
                    probe = await self.connection.channel()
                    await probe.get_exchange(results_exchange, ensure=True)
                    await probe.close()
            except BrokerError as exc:
                raise ConfigurationError(
                    f"results exchange '{results_exchange}' does not exist or is not usable: {exc}"
                ) from None
            self.results = await reply.get_exchange(results_exchange, ensure=False)

    async def close(self) -> None:
        """Close the connection (the broker requeues whatever is still unacked)."""
        self.ended.set()
        with contextlib.suppress(Exception):
            await self.connection.close()


async def first_of(*aws: Coroutine[Any, Any, Any]) -> None:
    """Wait until the first of these finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _observe(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
