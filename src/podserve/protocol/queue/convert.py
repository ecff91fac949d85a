"""AMQP messages ⇄ v2 types: the queue carries the same v2 request JSON as the REST body.

A request message::

    body            {"inputs": [...], "outputs": [...], "parameters": {...}}   (v2 REST JSON)
                    or JSON + binary tensors, with header inference-header-content-length: N
    reply_to        where the reply goes (a queue name, or amq.rabbitmq.reply-to)
    correlation_id  copied onto the reply, so a client matches replies to requests
    headers         model (and model_version) name the target model; without them the routing
                    key does when it names a served model, else the only served model
    content_encoding  gzip / deflate bodies are inflated, never past max_body_bytes

A reply carries the v2 response (or ``{"error": "..."}``) with the same ``correlation_id`` and
headers ``x-podserve-status`` (the HTTP status the same answer would have over REST) and, for
errors, ``x-podserve-error`` / ``x-podserve-error-type``. A dead-lettered copy keeps the
request's body and properties and adds those two error headers.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage

from podserve.errors import InvalidRequestError, ModelNotFoundError, PodserveError
from podserve.v2 import InferRequest, InferResponse
from podserve.v2.codecs import decode_infer, encode_infer
from podserve.v2.compression import decompress

MODEL_HEADER = "model"
VERSION_HEADER = "model_version"
HEADER_LENGTH = "inference-header-content-length"
STATUS_HEADER = "x-podserve-status"
ERROR_HEADER = "x-podserve-error"
ERROR_TYPE_HEADER = "x-podserve-error-type"
DELIVERY_COUNT_HEADER = "x-delivery-count"  # set by quorum queues on redelivery


@dataclass(slots=True)
class Reply:
    """An encoded answer, ready to publish."""

    body: bytes
    content_type: str
    headers: dict[str, Any] = field(default_factory=dict)
    error: PodserveError | None = None


def headers_of(message: AbstractIncomingMessage) -> dict[str, Any]:
    """The message headers with lower-cased names (AMQP header names are case-sensitive)."""
    return {str(k).lower(): v for k, v in (message.headers or {}).items()}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def target_model(
    headers: Mapping[str, Any], routing_key: str | None, served: Collection[str]
) -> tuple[str, str | None]:
    """(model, version) from the ``model`` header, else the routing key, else the only model."""
    version = _text(headers.get(VERSION_HEADER)) or None
    name = _text(headers.get(MODEL_HEADER))
    if name:
        return name, version
    if routing_key and routing_key in served:
        return routing_key, version
    if len(served) == 1:
        return next(iter(served)), version
    raise ModelNotFoundError(
        f"the message names no model: set the '{MODEL_HEADER}' header (served: "
        f"{', '.join(sorted(served)) or 'none'})"
    )


def decode_request(
    message: AbstractIncomingMessage, served: Collection[str], max_body_bytes: int
) -> InferRequest:
    """The v2 request a message carries; an :class:`InvalidRequestError` names what is wrong."""
    headers = headers_of(message)
    model, version = target_model(headers, message.routing_key, served)
    if model not in served:
        raise ModelNotFoundError(
            f"unknown model '{model}' (served: {', '.join(sorted(served)) or 'none'})"
        )
    body = message.body
    if len(body) > max_body_bytes:
        raise InvalidRequestError(
            f"message body of {len(body)} bytes exceeds max_body_bytes {max_body_bytes}"
        )
    if message.content_encoding:
        body = decompress(body, message.content_encoding.lower(), max_body_bytes)
    header_length = _header_length(headers.get(HEADER_LENGTH), len(body))
    return decode_infer(body, header_length, model, version)


def _header_length(value: Any, body_size: int) -> int | None:
    if value is None:
        return None
    try:
        length = int(_text(value) or "")
    except ValueError:
        raise InvalidRequestError(f"header {HEADER_LENGTH} must be an integer") from None
    if length < 0 or length > body_size:
        raise InvalidRequestError(
            f"header {HEADER_LENGTH} {length} does not fit a body of {body_size} bytes"
        )
    return length


def encode_reply(response: InferResponse, request: InferRequest) -> Reply:
    body, header_length = encode_infer(response, request)
    headers: dict[str, Any] = {STATUS_HEADER: 200, MODEL_HEADER: response.model_name}
    if header_length is None:
        return Reply(body, "application/json", headers)
    headers[HEADER_LENGTH] = header_length
    return Reply(body, "application/octet-stream", headers)


def encode_error(error: PodserveError) -> Reply:
    """A v2 error body; the headers say the status and the error class."""
    return Reply(
        orjson.dumps({"error": str(error)}),
        "application/json",
        {
            STATUS_HEADER: error.http_status,
            ERROR_HEADER: str(error)[:4000],
            ERROR_TYPE_HEADER: type(error).__name__,
        },
        error,
    )


def delivery_count(message: AbstractIncomingMessage) -> int:
    """How many times the broker delivered this message before (0 on the first delivery)."""
    value = headers_of(message).get(DELIVERY_COUNT_HEADER)
    try:
        return int(value) if value is not None else int(bool(message.redelivered))
    except (TypeError, ValueError):
        return int(bool(message.redelivered))


def reply_message(reply: Reply, request: AbstractIncomingMessage) -> aio_pika.Message:
    """The reply, as durable as the request: a persistent request gets a persistent reply.

    A reply is confirmed before its request is acked; a transient reply in a durable reply
    queue would still be lost by a broker restart after that ack, and with it the answer.
    """
    persistent = request.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    return aio_pika.Message(
        reply.body,
        content_type=reply.content_type,
        correlation_id=request.correlation_id,
        message_id=request.message_id,
        headers=reply.headers,
        delivery_mode=(
            aio_pika.DeliveryMode.PERSISTENT if persistent else aio_pika.DeliveryMode.NOT_PERSISTENT
        ),
    )


def dead_letter_message(request: AbstractIncomingMessage, error: PodserveError) -> aio_pika.Message:
    """The request as it came, plus why it was dead-lettered."""
    headers = dict(request.headers or {})
    headers[ERROR_HEADER] = str(error)[:4000]
    headers[ERROR_TYPE_HEADER] = type(error).__name__
    headers["x-podserve-delivery-count"] = delivery_count(request)
    return aio_pika.Message(
        request.body,
        headers=headers,
        content_type=request.content_type,
        content_encoding=request.content_encoding,
        correlation_id=request.correlation_id,
        reply_to=request.reply_to,
        message_id=request.message_id,
        timestamp=request.timestamp,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
