"""The queues a worker needs, declared idempotently: a quorum queue, its DLX and its DLQ.

::

    <queue> (quorum, durable) ── rejected / past x-delivery-limit ──► <queue>.dlx (direct)
      x-delivery-limit = N                                               │ key <queue>.dlq
      x-dead-letter-strategy = at-least-once                             ▼
                                                                     <queue>.dlq (quorum)

A quorum queue counts deliveries itself (``x-delivery-count``), so a message that kills every
worker that takes it is dead-lettered by the broker after ``delivery_limit`` returns, with no
bookkeeping on our side. At-least-once dead-lettering (which needs ``reject-publish``
overflow) keeps the broker from dropping a message on its way to the DLQ.

Every replica declares the same names with the same arguments, which RabbitMQ accepts as a
no-op; different arguments fail with a :class:`~podserve.errors.ConfigurationError` that says
so, rather than silently consuming from a queue shaped otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue

from podserve.errors import ConfigurationError
from podserve.protocol.queue.errors import broker_errors
from podserve.settings import Settings


@dataclass(frozen=True)
class Topology:
    """The names and limits of one request queue and its dead-letter pair."""

    queue: str
    dead_letter_exchange: str
    dead_letter_queue: str
    delivery_limit: int

    @classmethod
    def for_queue(
        cls,
        queue: str,
        *,
        dead_letter_exchange: str | None = None,
        dead_letter_queue: str | None = None,
        delivery_limit: int = 3,
    ) -> Topology:
        if not queue:
            raise ConfigurationError("the queue name is empty (--queue / PODSERVE_QUEUE)")
        if delivery_limit < 1:
            raise ConfigurationError("delivery_limit must be at least 1")
        return cls(
            queue=queue,
            dead_letter_exchange=dead_letter_exchange or f"{queue}.dlx",
            dead_letter_queue=dead_letter_queue or f"{queue}.dlq",
            delivery_limit=delivery_limit,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        if not settings.queue:
            raise ConfigurationError("no queue configured (--queue / PODSERVE_QUEUE)")
        return cls.for_queue(
            settings.queue,
            dead_letter_exchange=settings.dead_letter_exchange,
            dead_letter_queue=settings.dead_letter_queue,
            delivery_limit=settings.delivery_limit,
        )

    def queue_arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-dead-letter-routing-key": self.dead_letter_queue,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }


async def declare(channel: AbstractChannel, topology: Topology) -> AbstractQueue:
    """Declare DLX, DLQ and the request queue (a no-op when they already exist as declared).

    Use a channel of its own: a refused declaration closes the channel it was sent on.
    """
    with broker_errors(f"declaring queue '{topology.queue}'"):
        dlx = await channel.declare_exchange(
            topology.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        dlq = await channel.declare_queue(
            topology.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dlq.bind(dlx, routing_key=topology.dead_letter_queue)
        return await channel.declare_queue(
            topology.queue, durable=True, arguments=topology.queue_arguments()
        )


async def delete(channel: AbstractChannel, topology: Topology) -> None:
    """Remove the three objects (tests and benchmarks clean up with this)."""
    with broker_errors(f"deleting queue '{topology.queue}'"):
        await channel.queue_delete(topology.queue)
        await channel.queue_delete(topology.dead_letter_queue)
        await channel.exchange_delete(topology.dead_letter_exchange)
