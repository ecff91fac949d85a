"""``ModelInferRequest`` / ``ModelInferResponse`` ↔ the v2 types of :mod:`podserve.v2`.

The raw path is the one that matters for speed: ``tritonclient.grpc`` (and podserve's own
pipeline stages) send every input in ``raw_input_contents``, and each entry becomes a numpy
view of the bytes protobuf already holds (no copy here). Typed ``contents`` are accepted too,
for clients that build requests by hand; FP16, which has no typed field, is also accepted from
``fp32_contents``. Answers always use ``raw_output_contents``, as Triton does and as
tritonclient reads them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from podserve.errors import InvalidRequestError
from podserve.protocol.grpc._generated import grpc_service_pb2 as pb
from podserve.v2 import InferRequest, InferResponse, InferTensor, RequestedOutput, to_numpy_dtype
from podserve.v2.tensors import check_shape, element_count, tensor_from_raw, tensor_to_raw

# datatype -> the InferTensorContents field that carries it
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP16": "fp32_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_WIRE_DTYPE = {  # numpy dtype of each typed field as protobuf holds it
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}
_INT64_MAX = 2**63 - 1


# --- parameters -------------------------------------------------------------------------------


def params_from_pb(params: Any) -> dict[str, Any]:
    """``map<string, InferParameter>`` (or ``ModelRepositoryParameter``) → plain values."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, which) if which else None
    return out


def params_to_pb(values: dict[str, Any], target: Any) -> None:
    """Plain values → ``map<string, InferParameter>``, choosing the oneof by Python type."""
    for key, value in values.items():
        param = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            if value > _INT64_MAX:
                param.uint64_param = value
            else:
                param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        elif isinstance(value, bytes):
            param.string_param = value.decode("utf-8", "replace")
        else:
            param.string_param = str(value)


# --- requests ---------------------------------------------------------------------------------


def request_from_pb(msg: pb.ModelInferRequest) -> InferRequest:
    """Decode a ``ModelInferRequest``; every problem is an :class:`InvalidRequestError`."""
    raws = msg.raw_input_contents
    if raws and len(raws) != len(msg.inputs):
        raise InvalidRequestError(
            f"raw_input_contents has {len(raws)} entries for {len(msg.inputs)} inputs; "
            "when raw contents are used every input needs one, in the order of 'inputs'"
        )
    inputs = []
    for i, tensor in enumerate(msg.inputs):
        name, datatype = tensor.name, tensor.datatype
        if not name:
            raise InvalidRequestError(f"input {i} has no name")
        to_numpy_dtype(datatype)  # unknown datatypes fail here, with the list of known ones
        shape = check_shape(name, list(tensor.shape))
        if raws:
            if tensor.HasField("contents") and tensor.contents.ListFields():
                raise InvalidRequestError(
                    f"input '{name}': give its data in 'contents' or in raw_input_contents, "
                    "not both"
                )
            data = tensor_from_raw(name, datatype, shape, raws[i])
        else:
            data = _from_contents(name, datatype, shape, tensor.contents)
        inputs.append(InferTensor(name, datatype, shape, data, params_from_pb(tensor.parameters)))
    outputs = None
    if msg.outputs:
        outputs = [RequestedOutput(o.name, params_from_pb(o.parameters)) for o in msg.outputs]
        for o in outputs:
            if "classification" in o.parameters:
                raise InvalidRequestError(
                    f"output '{o.name}': the classification extension is not supported"
                )
    return InferRequest(
        model_name=msg.model_name,
        inputs=inputs,
        model_version=msg.model_version or None,
        id=msg.id or None,
        outputs=outputs,
        parameters=params_from_pb(msg.parameters),
    )


def _from_contents(
    name: str, datatype: str, shape: tuple[int, ...], contents: pb.InferTensorContents
) -> np.ndarray:
    """Typed ``InferTensorContents`` → an array of ``shape``, range-checked for small ints."""
    field = CONTENTS_FIELD[datatype]
    present = [f.name for f, _ in contents.ListFields()]
    if any(f != field for f in present):
        raise InvalidRequestError(
            f"input '{name}': {datatype} data belongs in contents.{field} (or "
            f"raw_input_contents), got contents.{', contents.'.join(present)}"
        )
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidRequestError(
            f"input '{name}': shape {list(shape)} needs {count} elements, "
            f"contents.{field} has {len(values)}"
        )
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    wire = np.array(values, dtype=_WIRE_DTYPE[field])
    target = to_numpy_dtype(datatype)
    if target.kind in "iu" and target != wire.dtype and wire.size:
        info = np.iinfo(target)
        if wire.min() < info.min or wire.max() > info.max:
            raise InvalidRequestError(
                f"input '{name}': a value of contents.{field} is out of range for {datatype}"
            )
    return wire.astype(target, copy=False).reshape(shape)


# --- responses --------------------------------------------------------------------------------


def response_to_pb(response: InferResponse) -> pb.ModelInferResponse:
    """Encode an answer with every output in ``raw_output_contents``, in the given order."""
    msg = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id or "",
    )
    params_to_pb(response.parameters, msg.parameters)
    raws = []
    for tensor in response.outputs:
        out = msg.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if tensor.parameters:
            params_to_pb(tensor.parameters, out.parameters)
        raw = tensor_to_raw(tensor.data)
        # protobuf only takes bytes: this is the one copy on the way out.
        raws.append(raw if isinstance(raw, bytes) else raw.tobytes())
    msg.raw_output_contents.extend(raws)
    return msg


def request_to_pb(request: InferRequest) -> pb.ModelInferRequest:
    """Encode a request with raw contents (what pipeline stages send to the next stage)."""
    msg = pb.ModelInferRequest(
        model_name=request.model_name,
        model_version=request.model_version or "",
        id=request.id or "",
    )
    params_to_pb(request.parameters, msg.parameters)
    raws = []
    for tensor in request.inputs:
        entry = msg.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if tensor.parameters:
            params_to_pb(tensor.parameters, entry.parameters)
        raw = tensor_to_raw(tensor.data)
        raws.append(raw if isinstance(raw, bytes) else raw.tobytes())
    msg.raw_input_contents.extend(raws)
    for o in request.outputs or []:
        out = msg.outputs.add(name=o.name)
        params_to_pb(o.parameters, out.parameters)
    return msg


def response_from_pb(msg: pb.ModelInferResponse) -> InferResponse:
    """Decode an answer (raw or typed contents); the client side of pipeline stages."""
    raws = msg.raw_output_contents
    outputs = []
    for i, tensor in enumerate(msg.outputs):
        shape = check_shape(tensor.name, list(tensor.shape))
        if i < len(raws):
            data = tensor_from_raw(tensor.name, tensor.datatype, shape, raws[i])
        else:
            data = _from_contents(tensor.name, tensor.datatype, shape, tensor.contents)
        outputs.append(
            InferTensor(
                tensor.name, tensor.datatype, shape, data, params_from_pb(tensor.parameters)
            )
        )
    return InferResponse(
        model_name=msg.model_name,
        model_version=msg.model_version,
        outputs=outputs,
        id=msg.id or None,
        parameters=params_from_pb(msg.parameters),
    )
