"""Message ⇄ v2 conversion rules and the ack/dead-letter table (no broker needed)."""

from __future__ import annotations

from typing import Any

import aio_pika
import orjson
import pytest
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pamqp.header import ContentHeader

from podserve.errors import (
    BrokerError,
    DeadlineExceededError,
    DrainingError,
    InferenceError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    OverloadedError,
    PodserveError,
)
from podserve.protocol.queue import convert
from podserve.protocol.queue.errors import Action, decide
from tests.protocol.queue.conftest import request


def incoming(
    body: bytes,
    *,
    headers: dict[str, Any] | None = None,
    routing_key: str = "requests",
    redelivered: bool = False,
    content_encoding: str | None = None,
) -> aio_pika.IncomingMessage:
    """A delivered message as aio-pika hands it to a consumer."""
    props = spec.Basic.Properties(
        headers=headers or {}, correlation_id="c1", reply_to="r", content_encoding=content_encoding
    )
    header = ContentHeader(properties=props, body_size=len(body))
    deliver = spec.Basic.Deliver(
        consumer_tag="t",
        delivery_tag=1,
        redelivered=redelivered,
        exchange="",
        routing_key=routing_key,
    )
    raw = DeliveredMessage(delivery=deliver, header=header, body=body, channel=None)  # type: ignore[arg-type]
    return aio_pika.IncomingMessage(raw)


def test_target_model_header_then_routing_key_then_the_only_model() -> None:
    served = {"a", "b"}
    assert convert.target_model({"model": b"a", "model_version": "2"}, "b", served) == ("a", "2")
    assert convert.target_model({}, "b", served) == ("b", None)
    assert convert.target_model({}, "requests", {"a"}) == ("a", None)
    with pytest.raises(ModelNotFoundError, match="'model' header"):
        convert.target_model({}, "requests", served)


def test_decode_request_json_binary_and_gzip() -> None:
    msg = incoming(request(3), headers={"Model": "doubler"})  # header names any case
    req = convert.decode_request(msg, {"doubler"}, 1 << 20)
    assert req.model_name == "doubler"
    assert req.inputs[0].data.tolist() == [[3.0, 3.5, -3.0, 1.0]]

    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "INT32",
                    "shape": [1, 2],
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    )
    raw = b"\x01\x00\x00\x00\x02\x00\x00\x00"
    msg = incoming(header + raw, headers={"inference-header-content-length": len(header)})
    assert convert.decode_request(msg, {"m"}, 1 << 20).inputs[0].data.tolist() == [[1, 2]]

    import gzip

    msg = incoming(gzip.compress(request(1)), content_encoding="gzip")
    assert convert.decode_request(msg, {"m"}, 1 << 20).inputs[0].shape == (1, 4)


def test_decode_request_refuses_what_cannot_be_served() -> None:
    with pytest.raises(ModelNotFoundError, match="unknown model 'x'"):
        convert.decode_request(incoming(request(1), headers={"model": "x"}), {"m"}, 1 << 20)
    with pytest.raises(InvalidRequestError, match="max_body_bytes"):
        convert.decode_request(incoming(request(1)), {"m"}, 10)
    msg = incoming(request(1), headers={"inference-header-content-length": 10**6})
    with pytest.raises(InvalidRequestError, match="inference-header-content-length"):
        convert.decode_request(msg, {"m"}, 1 << 20)


def test_delivery_count_from_the_quorum_header_or_the_redelivered_flag() -> None:
    assert convert.delivery_count(incoming(b"", headers={"x-delivery-count": 2})) == 2
    assert convert.delivery_count(incoming(b"", redelivered=True)) == 1
    assert convert.delivery_count(incoming(b"")) == 0


def test_error_reply_and_dead_letter_copy_carry_the_reason() -> None:
    error = InvalidRequestError("input 'x': shape [1] does not match [-1, 4]")
    reply = convert.encode_error(error)
    assert orjson.loads(reply.body) == {"error": str(error)}
    assert reply.headers[convert.STATUS_HEADER] == 400
    msg = incoming(b"body", headers={"model": "m", "x-delivery-count": 1})
    copy = convert.dead_letter_message(msg, error)
    assert copy.body == b"body"
    assert copy.correlation_id == "c1"
    assert copy.reply_to == "r"
    assert copy.headers is not None
    assert copy.headers[convert.ERROR_HEADER] == str(error)
    assert copy.headers[convert.ERROR_TYPE_HEADER] == "InvalidRequestError"
    assert copy.headers["model"] == "m"


@pytest.mark.parametrize(
    ("error", "count", "action"),
    [
        (OverloadedError("full"), 0, Action.RELEASE),  # refused before any work: nack
        (ModelNotReadyError("loading"), 1, Action.RELEASE),
        (DrainingError("bye"), 0, Action.RELEASE),
        (BrokerError("channel lost"), 0, Action.RETRY),  # attempted and failed: reject
        (DeadlineExceededError("late"), 0, Action.DEAD_LETTER),  # never re-run a passed deadline
        (OverloadedError("full"), 2, Action.DEAD_LETTER),  # the last delivery allowed
        (InvalidRequestError("bad"), 0, Action.DEAD_LETTER),
        (ModelNotFoundError("nope"), 0, Action.DEAD_LETTER),
        (InferenceError("model raised"), 0, Action.DEAD_LETTER),
    ],
)
def test_ack_dead_letter_table(error: PodserveError, count: int, action: Action) -> None:
    assert decide(error, count, delivery_limit=2) is action
