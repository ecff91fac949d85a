"""Publish v2 requests to a worker queue and await the replies, without hand-rolled AMQP.

::

    async with QueueClient("amqp://guest:guest@127.0.0.1:5672/", "inference-requests") as c:
        reply = await c.infer("minilm", encode_request({"text": np.array([b"hello"], object)}))
        reply.raise_for_error()
        embedding = reply.outputs()["embedding"]

Requests are persistent and published with confirms, so once :meth:`QueueClient.publish`
returns the broker has them. Replies come back on a reply queue of this client's own, which is
durable and not exclusive but expires when unused (``x-expires``), so neither a dropped
connection nor a broker restart deletes it and loses the replies published meanwhile. A
worker killed between replying and acking replies twice to the same correlation id; the
client hands out the first and counts the rest in :attr:`QueueClient.duplicates`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aio_pika
import numpy as np
import orjson
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from podserve.errors import BrokerError, DeadlineExceededError, InferenceError
from podserve.protocol.queue import convert
from podserve.protocol.queue.connection import connect
from podserve.protocol.queue.errors import broker_errors
from podserve.protocol.queue.topology import Topology, declare
from podserve.v2 import to_datatype
from podserve.v2.tensors import tensor_from_json, tensor_from_raw, tensor_to_json

REPLY_QUEUE_EXPIRES_MS = 10 * 60 * 1000


def encode_request(
    inputs: Mapping[str, np.ndarray],
    *,
    outputs: list[str] | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> bytes:
    """A v2 JSON request body from numpy arrays (batch axis first, as the model expects)."""
    doc: dict[str, Any] = {
        "inputs": [
            {
                "name": name,
                "datatype": to_datatype(arr),
                "shape": list(arr.shape),
                "data": tensor_to_json(arr),
            }
            for name, arr in inputs.items()
        ]
    }
    if outputs:
        doc["outputs"] = [{"name": n} for n in outputs]
    if parameters:
        doc["parameters"] = dict(parameters)
    return orjson.dumps(doc)


@dataclass(slots=True)
class QueueReply:
    """One reply: the v2 response (or error) and its AMQP headers."""

    correlation_id: str
    body: bytes
    content_type: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> int:
        return int(self.headers.get(convert.STATUS_HEADER, 200))

    @property
    def error(self) -> str | None:
        if self.status == 200:
            return None
        return str(self.json().get("error") or self.headers.get(convert.ERROR_HEADER, ""))

    def raise_for_error(self) -> None:
        if self.error is not None:
            kind = self.headers.get(convert.ERROR_TYPE_HEADER, "error")
            raise InferenceError(f"the worker answered {self.status} {kind}: {self.error}")

    def _split(self) -> tuple[bytes, memoryview | None]:
        length = self.headers.get(convert.HEADER_LENGTH)
        if length is None:
            return self.body, None
        view = memoryview(self.body)
        return bytes(view[: int(length)]), view[int(length) :]

    def json(self) -> dict[str, Any]:
        doc = orjson.loads(self._split()[0])
        return doc if isinstance(doc, dict) else {"error": "reply is not a JSON object"}

    def outputs(self) -> dict[str, np.ndarray]:
        """Output tensors by name, JSON or binary alike."""
        header, binary = self._split()
        doc = orjson.loads(header)
        out: dict[str, np.ndarray] = {}
        offset = 0
        for item in doc.get("outputs", []):
            name, dtype, shape = item["name"], item["datatype"], tuple(item["shape"])
            size = (item.get("parameters") or {}).get("binary_data_size")
            if size is not None and binary is not None:
                out[name] = tensor_from_raw(name, dtype, shape, binary[offset : offset + size])
                offset += size
            else:
                out[name] = tensor_from_json(name, dtype, shape, item["data"])
        return out


class QueueClient:
    """Publishes requests with ``reply_to`` + ``correlation_id`` and matches the replies."""

    def __init__(
        self,
        amqp_url: str,
        queue: str,
        *,
        topology: Topology | None = None,
        connection_name: str = "podserve-client",
    ) -> None:
        self.amqp_url = amqp_url
        self.queue = queue
        self.topology = topology or Topology.for_queue(queue)
        self.connection_name = connection_name
        self.reply_queue = f"podserve.reply.{uuid.uuid4().hex}"
        self.duplicates = 0
        self.unexpected = 0
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._replies: AbstractQueue | None = None
        self._pending: dict[str, asyncio.Future[QueueReply]] = {}
        self._answered: set[str] = set()

    @property
    def answered(self) -> int:
        """Requests that got their (first) reply."""
        return len(self._answered)

    async def __aenter__(self) -> QueueClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect, make sure the request queue exists, and start listening for replies."""
        self._connection = await connect(self.amqp_url, self.connection_name)
        with broker_errors(f"setting up the client of queue '{self.queue}'"):
            await self._ensure_queue()
            channel = self._channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._replies = await channel.declare_queue(
                self.reply_queue, durable=True, arguments={"x-expires": REPLY_QUEUE_EXPIRES_MS}
            )
            await self._replies.consume(self._on_reply)

    async def _ensure_queue(self) -> None:
        """Declare the worker's topology unless the queue exists (requests may precede workers)."""
        assert self._connection is not None
        probe = await self._connection.channel()
        try:
            await probe.declare_queue(self.queue, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            declaring = await self._connection.channel()
            try:
                await declare(declaring, self.topology)
            finally:
                with contextlib.suppress(Exception):
                    await declaring.close()
        finally:
            with contextlib.suppress(Exception):
                await probe.close()

    async def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                if self._channel is not None:
                    await self._channel.queue_delete(self.reply_queue)
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None

    async def publish(
        self,
        model: str | None,
        body: bytes,
        *,
        version: str | None = None,
        correlation_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Publish one request (confirmed by the broker); returns its correlation id."""
        if self._channel is None:
            raise BrokerError("QueueClient is not connected; use 'async with' or connect()")
        cid = correlation_id or uuid.uuid4().hex
        all_headers: dict[str, Any] = dict(headers or {})
        if model:
            all_headers[convert.MODEL_HEADER] = model
        if version:
            all_headers[convert.VERSION_HEADER] = version
        self._pending.setdefault(cid, asyncio.get_running_loop().create_future())
        message = aio_pika.Message(
            body,
            content_type="application/json",
            correlation_id=cid,
            message_id=cid,
            reply_to=self.reply_queue,
            headers=all_headers,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            with broker_errors(f"publishing to queue '{self.queue}'"):
                await self._channel.default_exchange.publish(message, self.queue, mandatory=True)
        except BaseException:
            self._pending.pop(cid, None)
            raise
        return cid

    async def result(self, correlation_id: str, timeout_s: float | None = None) -> QueueReply:
        future = self._pending.get(correlation_id)
        if future is None:
            raise KeyError(f"no request with correlation id {correlation_id!r} is pending")
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            raise DeadlineExceededError(
                f"no reply to {correlation_id} from queue '{self.queue}' within {timeout_s}s"
            ) from None
        finally:
            if future.done():
                self._pending.pop(correlation_id, None)

    async def infer(
        self, model: str | None, body: bytes, *, timeout_s: float | None = 60.0, **kwargs: Any
    ) -> QueueReply:
        """Publish one request and wait for its reply."""
        cid = await self.publish(model, body, **kwargs)
        return await self.result(cid, timeout_s)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        cid = message.correlation_id or ""
        headers = {str(k).lower(): v for k, v in (message.headers or {}).items()}
        reply = QueueReply(cid, message.body, message.content_type, headers)
        if cid in self._answered:
            self.duplicates += 1
        else:
            future = self._pending.get(cid)
            if future is None:
                self.unexpected += 1
            else:
                self._answered.add(cid)
                if not future.done():
                    future.set_result(reply)
        with contextlib.suppress(Exception):
            await message.ack()
