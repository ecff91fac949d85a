"""The queue surface: v2 requests from a RabbitMQ queue, replies to ``reply_to``.

Usage (``lifecycle.Server`` does this when ``settings.queue`` is set)::

    worker = QueueWorker(dataplane, settings)
    await worker.start()            # connect, declare, consume once the models are ready
    ...
    await worker.stop_consuming()   # SIGTERM: basic.cancel, delivered messages still finish
    await worker.stop(grace=1.0)    # wait for their replies and acks, close

Every delivered message becomes its own task that calls :meth:`DataPlane.infer`; prefetch
(``basic.qos``) lets about two batches' worth be in flight, so the model's batcher is fed full
batches while the previous one computes. A message is acked only after its reply is confirmed
by the broker (publisher confirms), so a crash at any point leaves it unacked and the broker
redelivers it; the duplicate reply this may cause carries the same correlation id and
:class:`~podserve.protocol.queue.client.QueueClient` drops it. Failures go through the single
table in :mod:`podserve.protocol.queue.errors`.

The connection is an aio-pika *robust* connection: after a broker restart or a forced close it
reconnects, re-declares the queue and restores the consumer (unless draining started).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from podserve import metrics
from podserve.dataplane import DataPlane
from podserve.errors import BrokerError, ConfigurationError, InferenceError, PodserveError
from podserve.protocol.queue import convert
from podserve.protocol.queue.connection import connect, redact
from podserve.protocol.queue.errors import Action, broker_errors, decide
from podserve.protocol.queue.topology import Topology, declare
from podserve.settings import Settings

log = logging.getLogger(__name__)


class QueueWorker:
    """Consumes v2 inference requests from ``settings.queue`` and publishes the replies."""

    def __init__(self, dataplane: DataPlane, settings: Settings) -> None:
        self.dataplane = dataplane
        self.settings = settings
        self.topology = Topology.from_settings(settings)
        self.prefetch = 0
        self.reconnects = 0
        self._connection: AbstractRobustConnection | None = None
        self._consume_channel: AbstractChannel | None = None
        self._reply_channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._results: AbstractExchange | None = None
        self._dlx: AbstractExchange | None = None
        self._consumer_tag: str | None = None
        self._stopping = False
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        q = self.topology.queue
        self._consumed = metrics.QUEUE_CONSUMED.labels(queue=q)
        self._redelivered = metrics.QUEUE_REDELIVERED.labels(queue=q)
        self._acked = metrics.QUEUE_ACKED.labels(queue=q)
        self._requeued = metrics.QUEUE_REQUEUED.labels(queue=q)
        self._inflight = metrics.QUEUE_INFLIGHT.labels(queue=q)

    @property
    def consuming(self) -> bool:
        return self._consumer_tag is not None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and declare now (a wrong URL fails the start); consume once ready."""
        s = self.settings
        self._connection = await connect(s.amqp_url, f"podserve-worker {self.topology.queue}")
        try:
            await self._open_channels()
        except BaseException:
            await self._close_connection()
            raise
        self._connection.reconnect_callbacks.add(self._on_reconnect)
        self.dataplane.on_state_change(self._on_state_change)
        log.info(
            "queue worker connected to %s, queue '%s' (DLQ '%s', delivery limit %d)",
            redact(s.amqp_url),
            self.topology.queue,
            self.topology.dead_letter_queue,
            self.topology.delivery_limit,
        )
        self._schedule_reconcile()

    async def _open_channels(self) -> None:
        assert self._connection is not None
        with broker_errors(f"opening channels for queue '{self.topology.queue}'"):
            declaring = await self._connection.channel()
            try:
                await declare(declaring, self.topology)
            finally:
                with contextlib.suppress(Exception):
                    await declaring.close()
            consume = self._consume_channel = await self._connection.channel()
            reply = self._reply_channel = await self._connection.channel(publisher_confirms=True)
            self._queue = await consume.declare_queue(
                self.topology.queue, durable=True, arguments=self.topology.queue_arguments()
            )
            self._dlx = await reply.get_exchange(self.topology.dead_letter_exchange, ensure=False)
        exchange = self.settings.results_exchange
        if exchange:
            try:
                with broker_errors(f"looking up results exchange '{exchange}'"):
                    probe = await self._connection.channel()
                    await probe.get_exchange(exchange, ensure=True)
                    await probe.close()
            except BrokerError as exc:
                raise ConfigurationError(
                    f"results exchange '{exchange}' does not exist or is not usable: {exc}"
                ) from None
            self._results = await reply.get_exchange(exchange, ensure=False)

    async def stop_consuming(self) -> None:
        """basic.cancel: no new deliveries; those already delivered still get replies."""
        self._stopping = True
        await self._reconcile()

    async def stop(self, grace: float) -> None:
        """Finish every delivered message (reply, ack), then close the connection."""
        await self.stop_consuming()
        timeout = max(grace, self.settings.drain_timeout_seconds)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.error(
                "%d queue messages still in flight after %.0fs; the broker will redeliver them",
                len(self._tasks),
                timeout,
            )
            for task in list(self._tasks):
                task.cancel()
        await self._close_connection()

    async def _close_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None

    # --- consume only while the data plane is ready ------------------------------------------

    def _on_state_change(self, _model: str, _state: str) -> None:
        if self._connection is not None:  # not after stop()
            self._schedule_reconcile()

    def _on_reconnect(self, *_args: Any) -> None:
        self.reconnects += 1
        log.warning("reconnected to RabbitMQ; resuming queue '%s'", self.topology.queue)
        self._schedule_reconcile()

    def _schedule_reconcile(self) -> None:
        self._spawn(self._reconcile_logged())

    async def _reconcile_logged(self) -> None:
        try:
            await self._reconcile()
        except PodserveError as exc:
            log.error(
                "queue '%s': %s (retrying on reconnect or the next state change)",
                self.topology.queue,
                exc,
            )

    async def _reconcile(self) -> None:
        """Consume iff the data plane is ready and we are not stopping."""
        async with self._lock:
            want = self.dataplane.ready() and not self._stopping
            if self._queue is None or self._consume_channel is None:
                return
            if want and self._consumer_tag is None:
                self.prefetch = self._prefetch()
                with broker_errors(f"consuming from queue '{self.topology.queue}'"):
                    await self._consume_channel.set_qos(prefetch_count=self.prefetch)
                    self._consumer_tag = await self._queue.consume(self._on_message)
                log.info("consuming queue '%s' (prefetch %d)", self.topology.queue, self.prefetch)
            elif not want and self._consumer_tag is not None:
                tag, self._consumer_tag = self._consumer_tag, None
                try:
                    with broker_errors(f"cancelling the consumer of '{self.topology.queue}'"):
                        await self._queue.cancel(tag)
                except BrokerError as exc:
                    # With the channel gone the broker has dropped the consumer already.
                    log.warning("%s", exc)
                log.info("stopped consuming queue '%s'", self.topology.queue)

    def _prefetch(self) -> int:
        if self.settings.prefetch:
            return self.settings.prefetch
        caps = [m.batcher.batch_cap for m in self.dataplane.models.values() if m.batcher]
        return max(2, 2 * sum(caps))

    # --- one message ------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # Our own task, not aiormq's: a channel closing must not cancel a running inference.
        self._spawn(self._handle_logged(message))

    async def _handle_logged(self, message: AbstractIncomingMessage) -> None:
        self._consumed.inc()
        if message.redelivered:
            self._redelivered.inc()
        self._inflight.inc()
        try:
            await self._handle(message)
        except BrokerError as exc:
            log.warning(
                "message %s left unacked, the broker will redeliver it: %s",
                message.correlation_id,
                exc,
            )
        finally:
            self._inflight.dec()

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        reply = await self._answer(message)
        action = Action.ACK
        if reply.error is not None:
            count = convert.delivery_count(message)
            action = decide(reply.error, count, self.topology.delivery_limit)
        if action is Action.REQUEUE:
            if not self._stopping:  # let a transient condition pass before the next try
                await asyncio.sleep(min(0.05 * 2 ** convert.delivery_count(message), 1.0))
            with broker_errors("requeueing a message"):
                await message.nack(requeue=True)
            self._requeued.inc()
            return
        await self._publish_reply(message, reply)
        if action is Action.DEAD_LETTER:
            assert reply.error is not None
            await self._dead_letter(message, reply.error)
            return
        with broker_errors("acking a message"):
            await message.ack()
        self._acked.inc()

    async def _answer(self, message: AbstractIncomingMessage) -> convert.Reply:
        try:
            request = convert.decode_request(
                message, self.dataplane.models.keys(), self.settings.max_body_bytes
            )
            response = await self.dataplane.infer(request, surface="queue")
            return convert.encode_reply(response, request)
        except PodserveError as exc:
            return convert.encode_error(exc)
        except Exception as exc:  # a bug must not kill the worker: answer it like HTTP's 500
            log.exception("unexpected error answering message %s", message.correlation_id)
            return convert.encode_error(InferenceError(f"{type(exc).__name__}: {exc}"))

    async def _publish_reply(self, message: AbstractIncomingMessage, reply: convert.Reply) -> None:
        """Publish and wait for the broker's confirm (the reply channel is in confirm mode)."""
        assert self._reply_channel is not None
        routing_key = message.reply_to
        exchange = self._results
        if exchange is None:
            if not routing_key:
                log.warning(
                    "message %s has no reply_to; its answer is dropped", message.correlation_id
                )
                return
            exchange = self._reply_channel.default_exchange
        elif not routing_key:
            routing_key = convert.headers_of(message).get(convert.MODEL_HEADER) or ""
        with broker_errors("publishing a reply"):
            await exchange.publish(
                convert.reply_message(reply, message), str(routing_key), mandatory=False
            )

    async def _dead_letter(self, message: AbstractIncomingMessage, error: PodserveError) -> None:
        """A copy with the reason to the DLQ, then ack; if that fails, let the broker do it."""
        assert self._dlx is not None
        label = type(error).__name__
        log.warning("dead-lettering message %s: %s", message.correlation_id, error)
        try:
            with broker_errors("dead-lettering a message"):
                await self._dlx.publish(
                    convert.dead_letter_message(message, error),
                    self.topology.dead_letter_queue,
                    mandatory=False,
                )
                await message.ack()
        except BrokerError:
            # reject(requeue=False) routes through the queue's own DLX (x-death, no reason).
            with broker_errors("rejecting a message"):
                await message.reject(requeue=False)
        metrics.QUEUE_DEAD_LETTERED.labels(queue=self.topology.queue, error=label).inc()
