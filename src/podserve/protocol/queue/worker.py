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
table in :mod:`podserve.protocol.queue.errors`; every delivery is settled (ack, reject, nack)
on the channel it came from, or forgotten when that channel is gone.

Reconnection: the worker holds one :class:`~podserve.protocol.queue.session.Session` at a
time. When its connection or a channel closes (broker restart, forced close, a channel
error), :meth:`_supervise` opens a new session with backoff, sets QoS and consumes again on
the new channels. Deliveries of the dead session are never replied to, acked or rejected: the
broker requeued them when the connection dropped and will deliver them again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Coroutine
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from podserve import metrics
from podserve.dataplane import DataPlane
from podserve.errors import BrokerError, InferenceError, PodserveError
from podserve.protocol.queue import convert
from podserve.protocol.queue.connection import redact
from podserve.protocol.queue.errors import Action, broker_errors, decide
from podserve.protocol.queue.session import Session, first_of
from podserve.protocol.queue.topology import Topology
from podserve.settings import Settings

log = logging.getLogger(__name__)


class _Forgotten(Exception):
    """The session this delivery came through is gone; the broker requeued the message."""


class QueueWorker:
    """Consumes v2 inference requests from ``settings.queue`` and publishes the replies."""

    def __init__(self, dataplane: DataPlane, settings: Settings) -> None:
        self.dataplane = dataplane
        self.settings = settings
        self.topology = Topology.from_settings(settings)
        self.prefetch = 0
        self.reconnects = 0
        self._session: Session | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._closed = asyncio.Event()  # stop() was called: no more sessions
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
        return self._session is not None and self._session.consumer_tag is not None

    @property
    def _name(self) -> str:
        return f"podserve-worker {self.topology.queue}"

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and declare now (a wrong URL fails the start); consume once ready."""
        s = self.settings
        self._session = await Session.open(
            s.amqp_url, self._name, self.topology, s.results_exchange, number=0
        )
        self.dataplane.on_state_change(self._on_state_change)
        log.info(
            "queue worker connected to %s, queue '%s' (DLQ '%s', delivery limit %d)",
            redact(s.amqp_url),
            self.topology.queue,
            self.topology.dead_letter_queue,
            self.topology.delivery_limit,
        )
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())
        self._schedule_reconcile()

    async def _supervise(self) -> None:
        """Wait for the session to end, then open the next one (with backoff) until stop()."""
        number = 0
        while not self._closed.is_set():
            session = self._session
            if session is not None:
                await first_of(session.ended.wait(), self._closed.wait())
                if self._closed.is_set():
                    return
                self._session = None
                await session.close()  # a channel error leaves the connection open
                log.warning(
                    "lost the connection to RabbitMQ; %d delivered messages of queue '%s' are "
                    "forgotten (the broker requeues them); reconnecting",
                    sum(1 for t in self._tasks if t.get_name() == f"delivery-{session.number}"),
                    self.topology.queue,
                )
            number += 1
            s = self.settings
            self._session = await Session.reopen(
                s.amqp_url, self._name, self.topology, s.results_exchange, number, self._closed
            )
            if self._session is None:
                return
            self.reconnects += 1
            log.warning("reconnected to RabbitMQ; resuming queue '%s'", self.topology.queue)
            await self._reconcile_logged()

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
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._closed.set()
        if self._supervisor is not None:
            await self._supervisor
            self._supervisor = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- consume only while the data plane is ready ------------------------------------------

    def _on_state_change(self, _model: str, _state: str) -> None:
        if not self._closed.is_set():
            self._schedule_reconcile()

    def _schedule_reconcile(self) -> None:
        self._spawn(self._reconcile_logged(), "reconcile")

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
            session = self._session
            if session is None or not session.alive:
                return  # the next session reconciles once it is open
            assert session.queue is not None
            assert session.consume_channel is not None
            want = self.dataplane.ready() and not self._stopping
            if want and session.consumer_tag is None:
                self.prefetch = self._prefetch()
                with broker_errors(f"consuming from queue '{self.topology.queue}'"):
                    await session.consume_channel.set_qos(prefetch_count=self.prefetch)
                    session.consumer_tag = await session.queue.consume(
                        functools.partial(self._on_message, session)
                    )
                log.info("consuming queue '%s' (prefetch %d)", self.topology.queue, self.prefetch)
            elif not want and session.consumer_tag is not None:
                tag, session.consumer_tag = session.consumer_tag, None
                try:
                    with broker_errors(f"cancelling the consumer of '{self.topology.queue}'"):
                        await session.queue.cancel(tag)
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

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()
        if not task.cancelled() and task.exception() is not None:
            # Every task's failure is seen here, never as "exception was never retrieved".
            log.error("queue task %s failed", task.get_name(), exc_info=task.exception())

    async def _on_message(self, session: Session, message: AbstractIncomingMessage) -> None:
        # Our own task, not aiormq's: a channel closing must not cancel a running inference.
        self._spawn(self._handle_logged(session, message), f"delivery-{session.number}")

    async def _handle_logged(self, session: Session, message: AbstractIncomingMessage) -> None:
        self._consumed.inc()
        if message.redelivered:
            self._redelivered.inc()
        self._inflight.inc()
        try:
            await self._handle(session, message)
        except _Forgotten:
            log.info(
                "message %s forgotten: its connection closed and the broker requeued it",
                message.correlation_id,
            )
        except BrokerError as exc:
            # Settling failed on a live channel: close the session so the broker requeues it
            # rather than letting it hold a prefetch slot until the consumer timeout.
            log.warning(
                "message %s could not be settled (%s); reconnecting so the broker requeues it",
                message.correlation_id,
                exc,
            )
            await session.close()
        finally:
            self._inflight.dec()

    async def _settle(self, session: Session, what: str, call: Coroutine[Any, Any, Any]) -> None:
        """Run one broker call for this delivery, or forget the delivery if its session ends.

        The call races the session's end: aiormq may never resolve a confirm or an ack sent
        just before the connection dropped, and such a call must not hold the task forever.
        """
        if not session.alive:
            call.close()
            raise _Forgotten
        task = asyncio.ensure_future(call)
        ended = asyncio.ensure_future(session.ended.wait())
        try:
            await asyncio.wait((task, ended), return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            if not task.done():
                task.cancel()
            await asyncio.gather(task, ended, return_exceptions=True)
        if task.cancelled() or (task.exception() is not None and not session.alive):
            raise _Forgotten
        try:
            with broker_errors(what):
                task.result()
        except BrokerError:
            if not session.alive:
                raise _Forgotten from None
            raise

    async def _handle(self, session: Session, message: AbstractIncomingMessage) -> None:
        reply = await self._answer(message)
        action = Action.ACK
        if reply.error is not None:
            count = convert.delivery_count(message)
            action = decide(reply.error, count, self.topology.delivery_limit)
        if action in (Action.RETRY, Action.RELEASE):
            if not self._stopping:  # let a transient condition pass before the next try
                await asyncio.sleep(min(0.05 * 2 ** convert.delivery_count(message), 1.0))
            if action is Action.RETRY:
                await self._settle(session, "rejecting a message", message.reject(requeue=True))
            else:
                await self._settle(session, "releasing a message", message.nack(requeue=True))
            self._requeued.inc()
            return
        try:
            await self._settle(
                session, "publishing a reply", self._publish_reply(session, message, reply)
            )
        except BrokerError as exc:
            # The broker refused the reply (nack, e.g. a full reply queue): settle the request
            # now, as a failed try, rather than leave it holding a prefetch slot.
            failure = BrokerError(f"the reply could not be published: {exc}")
            if decide(failure, convert.delivery_count(message), self.topology.delivery_limit) is (
                Action.DEAD_LETTER
            ):
                await self._dead_letter(session, message, failure)
                return
            log.warning(
                "reply to %s not published (%s); requeueing it", message.correlation_id, exc
            )
            await self._settle(session, "rejecting a message", message.reject(requeue=True))
            self._requeued.inc()
            return
        if action is Action.DEAD_LETTER:
            assert reply.error is not None
            await self._dead_letter(session, message, reply.error)
            return
        await self._settle(session, "acking a message", message.ack())
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

    async def _publish_reply(
        self, session: Session, message: AbstractIncomingMessage, reply: convert.Reply
    ) -> None:
        """Publish and wait for the broker's confirm (the reply channel is in confirm mode)."""
        assert session.reply_channel is not None
        routing_key = message.reply_to
        exchange = session.results
        if exchange is None:
            if not routing_key:
                log.warning(
                    "message %s has no reply_to; its answer is dropped", message.correlation_id
                )
                return
            exchange = session.reply_channel.default_exchange
        elif not routing_key:
            routing_key = convert.headers_of(message).get(convert.MODEL_HEADER) or ""
        await exchange.publish(
            convert.reply_message(reply, message), str(routing_key), mandatory=False
        )

    async def _dead_letter(
        self, session: Session, message: AbstractIncomingMessage, error: PodserveError
    ) -> None:
        """A copy with the reason to the DLQ, then ack; if that fails, let the broker do it."""
        assert session.dlx is not None
        label = type(error).__name__
        log.warning("dead-lettering message %s: %s", message.correlation_id, error)
        copy = convert.dead_letter_message(message, error)
        try:
            await self._settle(
                session,
                "dead-lettering a message",
                session.dlx.publish(copy, self.topology.dead_letter_queue, mandatory=False),
            )
            await self._settle(session, "acking a message", message.ack())
        except BrokerError:
            # reject(requeue=False) routes through the queue's own DLX (x-death, no reason).
            await self._settle(session, "rejecting a message", message.reject(requeue=False))
        metrics.QUEUE_DEAD_LETTERED.labels(queue=self.topology.queue, error=label).inc()
