"""The v2 body REST and the queue share: JSON tensors and Triton's binary tensors."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import orjson
import pytest

from podserve.errors import InvalidRequestError, PayloadTooLargeError
from podserve.v2 import InferRequest, InferResponse, output_tensor
from podserve.v2.codecs import decode_infer, encode_infer
from podserve.v2.compression import decompress


def test_json_and_binary_inputs_decode_to_arrays() -> None:
    raw = np.arange(6, dtype="<f4").tobytes()
    header = orjson.dumps(
        {
            "id": "r1",
            "inputs": [
                {"name": "a", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
                {
                    "name": "b",
                    "datatype": "FP32",
                    "shape": [2, 3],
                    "parameters": {"binary_data_size": len(raw)},
                },
                {"name": "t", "datatype": "BYTES", "shape": [1], "data": ["héllo"]},
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
            "parameters": {"priority": 2},
        }
    )
    req = decode_infer(header + raw, len(header), "m", "1")
    a, b, t = req.inputs
    assert a.data.tolist() == [[1, 2], [3, 4]]
    assert b.data.dtype == np.float32
    assert b.data.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert t.data.tolist() == ["héllo".encode()]
    assert (req.id, req.priority, req.model_version) == ("r1", 2, "1")
    assert req.outputs is not None
    assert req.outputs[0].binary is True


@pytest.mark.parametrize(
    ("doc", "header_length", "message"),
    [
        (b"[1]", None, "must be a JSON object"),
        (b"{", None, "not valid JSON"),
        (b'{"inputs": []}', None, "non-empty list"),
        (
            b'{"inputs": [{"name": "a", "datatype": "FP33", "shape": [1], "data": [1]}]}',
            None,
            "FP33",
        ),
        (
            b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [2], "data": [1]}]}',
            None,
            "needs 2",
        ),
        (
            b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], '
            b'"parameters": {"binary_data_size": 8}}]}',
            None,
            "binary_data_size 8 but only 0 bytes",
        ),
        (
            b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}], '
            b'"parameters": {"binary_data_output": "yes"}}',
            None,
            "request: parameter 'binary_data_output' must be true or false, not a str",
        ),
        (
            b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}], '
            b'"outputs": [{"name": "y", "parameters": {"binary_data": "false"}}]}',
            None,
            "output 'y': parameter 'binary_data' must be true or false, not a str",
        ),
        (
            b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}], '
            b'"outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}',
            None,
            "output 'y': parameter 'binary_data' must be true or false, not a int",
        ),
    ],
)
def test_bad_bodies_are_refused_naming_the_problem(
    doc: bytes, header_length: int | None, message: str
) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        decode_infer(doc, header_length, "m", None)


def test_trailing_binary_data_is_refused() -> None:
    header = b'{"inputs": [{"name": "a", "datatype": "INT8", "shape": [1], "data": [1]}]}'
    with pytest.raises(InvalidRequestError, match="4 bytes of binary data"):
        decode_infer(header + b"abcd", len(header), "m", None)


def test_outputs_are_json_unless_binary_is_asked_for() -> None:
    y = np.array([[1.5, 2.5]], dtype=np.float32)
    s = np.array([b"ab"], dtype=object)
    response = InferResponse("m", "1", [output_tensor("y", y), output_tensor("s", s)], id="r1")
    plain = decode_infer(
        b'{"inputs": [{"name": "a", "datatype": "INT8", "shape": [1], "data": [1]}]}',
        None,
        "m",
        None,
    )
    body, header_length = encode_infer(response, plain)
    assert header_length is None
    doc = json.loads(body)
    assert doc["outputs"][0]["data"] == [1.5, 2.5]
    assert doc["outputs"][1]["data"] == ["ab"]
    assert doc["id"] == "r1"

    plain.parameters["binary_data_output"] = True
    body, header_length = encode_infer(response, plain)
    assert header_length is not None
    doc = json.loads(body[:header_length])
    sizes = [o["parameters"]["binary_data_size"] for o in doc["outputs"]]
    assert sizes == [8, 6]
    tail = body[header_length:]
    assert np.frombuffer(tail[:8], dtype="<f4").tolist() == [1.5, 2.5]
    assert tail[8:] == struct.pack("<I", 2) + b"ab"


def test_gzip_and_deflate_bodies_inflate_within_the_limit() -> None:
    body = b'{"inputs": []}' * 10
    gz = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    gzipped = gz.compress(body) + gz.flush()
    assert decompress(gzipped, "gzip", 1000) == body
    assert decompress(zlib.compress(body), "deflate", 1000) == body
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decompress(raw.compress(body) + raw.flush(), "deflate", 1000) == body  # bare stream
    assert decompress(body, "identity", 10) == body
    with pytest.raises(PayloadTooLargeError, match="exceeds the limit of 100 bytes"):
        decompress(zlib.compress(b"x" * 10_000), "deflate", 100)
    with pytest.raises(InvalidRequestError, match="truncated"):
        decompress(gzipped[:-8], "gzip", 1000)
    with pytest.raises(InvalidRequestError, match="unsupported Content-Encoding 'br'"):
        decompress(body, "br", 1000)


@pytest.mark.parametrize(
    ("parameters", "timeout_s", "priority"),
    [
        ({}, None, 0),
        ({"timeout": 0, "priority": 3}, None, 3),
        ({"timeout": 1500, "priority": 2.0}, 0.0015, 2),  # 2.0 is how some encoders write 2
        ({"timeout": 2.5e6, "priority": -1}, 2.5, -1),
    ],
)
def test_timeout_and_priority_read_from_numbers(
    parameters: dict[str, object], timeout_s: float | None, priority: int
) -> None:
    req = InferRequest("m", [], parameters=dict(parameters))
    assert (req.timeout_s, req.priority) == (timeout_s, priority)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"timeout": True}, "'timeout' must be a number"),
        ({"timeout": "100"}, "'timeout' must be a number"),
        ({"timeout": float("inf")}, "'timeout' must be >= 0"),  # gRPC's double_param can
        ({"timeout": float("nan")}, "'timeout' must be >= 0"),
        ({"timeout": -1}, "'timeout' must be >= 0"),
        ({"priority": False}, "'priority' must be an integer"),
        ({"priority": "1"}, "'priority' must be an integer"),
        ({"priority": 1.5}, "'priority' must be an integer"),
    ],
)
def test_timeout_and_priority_refuse_what_is_not_their_number(
    parameters: dict[str, object], message: str
) -> None:
    req = InferRequest("m", [], parameters=dict(parameters))
    with pytest.raises(InvalidRequestError, match=message):
        _ = req.timeout_s, req.priority
