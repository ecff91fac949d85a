"""ModelInferRequest/Response ↔ v2 types, without a server."""

from __future__ import annotations

import numpy as np
import pytest

from podserve.errors import InvalidRequestError
from podserve.protocol.grpc import convert
from podserve.protocol.grpc._generated import grpc_service_pb2 as pb
from podserve.v2 import InferRequest, InferResponse, InferTensor, RequestedOutput
from tests.models import DATATYPES

VALUES = {
    "BOOL": np.array([True, False, True]),
    "UINT8": np.array([0, 7, 255], np.uint8),
    "UINT16": np.array([0, 7, 65535], np.uint16),
    "UINT32": np.array([0, 7, 2**32 - 1], np.uint32),
    "UINT64": np.array([0, 7, 2**64 - 1], np.uint64),
    "INT8": np.array([-128, 0, 127], np.int8),
    "INT16": np.array([-(2**15), 0, 2**15 - 1], np.int16),
    "INT32": np.array([-(2**31), 0, 2**31 - 1], np.int32),
    "INT64": np.array([-(2**63), 0, 2**63 - 1], np.int64),
    "FP16": np.array([0.5, -1.0, 65504.0], np.float16),
    "FP32": np.array([0.5, -1.0, 3.25e38], np.float32),
    "FP64": np.array([0.5, -1.0, 1e300], np.float64),
    "BYTES": np.array([b"", b"\x00a", "é".encode()], dtype=object),
}


def _raw_request(arrays: dict[str, np.ndarray]) -> pb.ModelInferRequest:
    req = InferRequest("m", [InferTensor(n, n, a.shape, a) for n, a in arrays.items()])
    return convert.request_to_pb(req)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_raw_inputs_round_trip_every_datatype(datatype: str) -> None:
    array = VALUES[datatype].reshape(1, 3)
    msg = pb.ModelInferRequest.FromString(_raw_request({datatype: array}).SerializeToString())
    decoded = convert.request_from_pb(msg).inputs[0]
    assert (decoded.name, decoded.datatype, decoded.shape) == (datatype, datatype, (1, 3))
    assert decoded.data.dtype == array.dtype
    assert np.array_equal(decoded.data, array)


def test_raw_input_is_a_view_of_the_message_bytes() -> None:
    array = np.arange(384, dtype=np.float32).reshape(1, 384)
    msg = _raw_request({"FP32": array})
    decoded = convert.request_from_pb(msg).inputs[0].data
    assert not decoded.flags.owndata  # a numpy view over protobuf's bytes, no copy
    assert np.array_equal(decoded, array)


@pytest.mark.parametrize("datatype", [dt for dt in DATATYPES])
def test_typed_contents_every_datatype(datatype: str) -> None:
    array = VALUES[datatype]
    msg = pb.ModelInferRequest(model_name="m")
    tensor = msg.inputs.add(name="x", datatype=datatype, shape=[3])
    field = convert.CONTENTS_FIELD[datatype]
    getattr(tensor.contents, field).extend(
        list(array)
        if datatype == "BYTES"
        else array.astype(np.float32 if datatype == "FP16" else array.dtype).tolist()
    )
    decoded = convert.request_from_pb(msg).inputs[0].data
    assert decoded.dtype == array.dtype
    assert np.array_equal(decoded, array)


def test_typed_contents_out_of_range_is_rejected() -> None:
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="x", datatype="INT8", shape=[1]).contents.int_contents.append(300)
    with pytest.raises(InvalidRequestError, match="out of range for INT8"):
        convert.request_from_pb(msg)


def test_typed_contents_in_the_wrong_field() -> None:
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="x", datatype="INT32", shape=[1]).contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidRequestError, match=r"INT32 data belongs in contents.int_contents"):
        convert.request_from_pb(msg)


def test_typed_contents_count_mismatch() -> None:
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="x", datatype="FP64", shape=[2, 2]).contents.fp64_contents.extend([1, 2])
    with pytest.raises(
        InvalidRequestError, match=r"needs 4 elements, contents.fp64_contents has 2"
    ):
        convert.request_from_pb(msg)


def test_raw_and_contents_together_are_rejected() -> None:
    msg = _raw_request({"FP32": np.zeros((1, 2), np.float32)})
    msg.inputs[0].contents.fp32_contents.extend([0.0, 0.0])
    with pytest.raises(InvalidRequestError, match="not both"):
        convert.request_from_pb(msg)


def test_raw_count_must_match_inputs() -> None:
    msg = _raw_request({"FP32": np.zeros((1, 2), np.float32)})
    msg.inputs.add(name="y", datatype="FP32", shape=[1])
    with pytest.raises(InvalidRequestError, match="1 entries for 2 inputs"):
        convert.request_from_pb(msg)


@pytest.mark.parametrize(
    ("datatype", "shape", "raw", "message"),
    [
        ("FP32", [2], b"\x00" * 7, "needs 8 bytes, got 7"),
        ("FP99", [1], b"\x00", "unknown datatype 'FP99'"),
        ("FP32", [-1], b"", "shape must be a list of integers >= 0"),
        ("BYTES", [2], b"\x01\x00\x00\x00a", "BYTES item"),
    ],
)
def test_bad_raw_inputs(datatype: str, shape: list[int], raw: bytes, message: str) -> None:
    msg = pb.ModelInferRequest(model_name="m", raw_input_contents=[raw])
    msg.inputs.add(name="x", datatype=datatype, shape=shape)
    with pytest.raises(InvalidRequestError, match=message):
        convert.request_from_pb(msg)


def test_parameters_ids_and_requested_outputs() -> None:
    req = InferRequest(
        "m",
        [InferTensor("x", "INT32", (1,), np.array([1], np.int32))],
        model_version="3",
        id="req-1",
        outputs=[RequestedOutput("b"), RequestedOutput("a", {"binary_data": True})],
        parameters={
            "priority": 2,
            "timeout": 1500,
            "flag": True,
            "ratio": 0.5,
            "tag": "t",
            "big": 2**64 - 1,
        },
    )
    back = convert.request_from_pb(
        pb.ModelInferRequest.FromString(convert.request_to_pb(req).SerializeToString())
    )
    assert (back.model_version, back.id) == ("3", "req-1")
    assert back.parameters == req.parameters
    assert back.priority == 2
    assert back.timeout_s == pytest.approx(0.0015)
    assert [(o.name, o.parameters) for o in back.outputs or []] == [
        ("b", {}),
        ("a", {"binary_data": True}),
    ]


def test_classification_output_is_rejected() -> None:
    msg = _raw_request({"FP32": np.zeros((1, 2), np.float32)})
    msg.outputs.add(name="y").parameters["classification"].int64_param = 3
    with pytest.raises(InvalidRequestError, match="classification extension"):
        convert.request_from_pb(msg)


def test_response_uses_raw_outputs_in_order() -> None:
    outs = [InferTensor(dt, dt, (3,), VALUES[dt]) for dt in ("BYTES", "FP16", "INT8")]
    msg = convert.response_to_pb(InferResponse("m", "1", outs, id="x", parameters={"k": 1}))
    assert [o.name for o in msg.outputs] == ["BYTES", "FP16", "INT8"]
    assert len(msg.raw_output_contents) == 3
    assert msg.raw_output_contents[1] == VALUES["FP16"].astype("<f2").tobytes()
    back = convert.response_from_pb(msg)
    assert back.id == "x"
    assert back.parameters == {"k": 1}
    for tensor, original in zip(back.outputs, outs, strict=True):
        assert np.array_equal(tensor.data, original.data)
