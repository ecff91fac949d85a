"""v2 request and response documents ⇄ v2 types: JSON tensors and Triton's binary-tensor
extension, the body format REST and the queue share.

A request body is either a JSON object, or (with a JSON header length N, which REST carries in
``Inference-Header-Content-Length`` and the queue in a message header) N bytes of JSON followed
by the raw data of every input whose ``parameters.binary_data_size`` is set, in the order the
inputs are listed. Binary inputs become zero-copy numpy views over the body.

Outputs are binary when their ``parameters.binary_data`` says so, else when the request-level
``binary_data_output`` parameter is true; a response with any binary output has a JSON header
length (the surface puts it in its own header) and is not plain JSON.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from podserve.errors import InvalidRequestError
from podserve.v2.tensors import (
    check_shape,
    tensor_from_json,
    tensor_from_raw,
    tensor_to_json,
    tensor_to_raw,
)
from podserve.v2.types import (
    InferRequest,
    InferResponse,
    InferTensor,
    RequestedOutput,
    to_numpy_dtype,
)

_NUMPY_OPT = orjson.OPT_SERIALIZE_NUMPY


# --- requests -----------------------------------------------------------------------------


def decode_infer(
    body: bytes, header_length: int | None, model_name: str, model_version: str | None
) -> InferRequest:
    """Decode a JSON (optionally followed by binary tensors) inference request."""
    if header_length is None:
        header: bytes | memoryview = body
        binary: memoryview | None = None
    else:
        view = memoryview(body)
        header, binary = view[:header_length], view[header_length:]
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidRequestError("request body must be a JSON object")
    items = doc.get("inputs")
    if not isinstance(items, list) or not items:
        raise InvalidRequestError("'inputs' must be a non-empty list")
    inputs: list[InferTensor] = []
    offset = 0
    for item in items:
        if not isinstance(item, dict):
            raise InvalidRequestError("each input must be a JSON object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequestError("each input needs a 'name' string")
        datatype = item.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidRequestError(f"input '{name}': 'datatype' must be a string")
        to_numpy_dtype(datatype)
        shape = check_shape(name, item.get("shape"))
        params = _parameters(item, f"input '{name}'")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidRequestError(f"input '{name}': binary_data_size must be an int >= 0")
            if binary is None or offset + size > len(binary):
                available = 0 if binary is None else len(binary) - offset
                raise InvalidRequestError(
                    f"input '{name}': binary_data_size {size} but only {available} bytes of "
                    "binary data follow the JSON header (Inference-Header-Content-Length)"
                )
            array = tensor_from_raw(name, datatype, shape, binary[offset : offset + size])
            offset += size
            if not array.flags.aligned:  # the JSON header has any length; models want alignment
                array = array.copy()
        elif "data" in item:
            array = tensor_from_json(name, datatype, shape, item["data"])
        else:
            raise InvalidRequestError(f"input '{name}': needs 'data' or binary_data_size")
        inputs.append(InferTensor(name, datatype, shape, array))
    if binary is not None and offset != len(binary):
        raise InvalidRequestError(
            f"{len(binary) - offset} bytes of binary data follow the JSON header that no input's "
            "binary_data_size accounts for"
        )
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequestError("'id' must be a string")
    return InferRequest(
        model_name=model_name,
        inputs=inputs,
        model_version=model_version,
        id=request_id,
        outputs=_requested_outputs(doc.get("outputs")),
        parameters=_flagged(_parameters(doc, "request"), "binary_data_output", "request"),
    )


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidRequestError(f"{where}: 'parameters' must be a JSON object")
    return params


def _flagged(params: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    """``params`` once its ``key`` is absent or a JSON boolean: a string such as "false" would
    otherwise choose the answer's format by the accident of its truthiness."""
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidRequestError(
            f"{where}: parameter '{key}' must be true or false, not a {type(value).__name__}"
        )
    return params


def _requested_outputs(items: Any) -> list[RequestedOutput] | None:
    if items is None:
        return None
    if not isinstance(items, list):
        raise InvalidRequestError("'outputs' must be a list")
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidRequestError("each requested output needs a 'name' string")
        where = f"output '{item['name']}'"
        params = _flagged(_parameters(item, where), "binary_data", where)
        if "classification" in params:
            raise InvalidRequestError("the classification extension is not supported")
        out.append(RequestedOutput(item["name"], params))
    return out


# --- responses ----------------------------------------------------------------------------


def encode_infer(response: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when the body is plain JSON)."""
    default_binary = request.parameters.get("binary_data_output") is True
    wanted = {o.name: o.binary for o in request.outputs} if request.outputs else {}
    outputs: list[dict[str, Any]] = []
    raws: list[bytes | memoryview] = []
    for tensor in response.outputs:
        binary = wanted.get(tensor.name)
        if binary is None:
            binary = default_binary
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
        }
        if binary:
            raw = tensor_to_raw(tensor.data)
            entry["parameters"] = {"binary_data_size": len(raw)}
            raws.append(raw)
        else:
            entry["data"] = _json_data(tensor.data)
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version:
        doc["model_version"] = response.model_version
    if response.id is not None:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    doc["outputs"] = outputs
    header = orjson.dumps(doc, option=_NUMPY_OPT)
    if not raws:
        return header, None
    return b"".join([header, *raws]), len(header)


def _json_data(array: np.ndarray) -> Any:
    """A flat row-major JSON value; orjson writes numeric numpy arrays without a Python list."""
    if array.dtype.kind in "biuf" and array.dtype.itemsize <= 8:
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("="))
        return np.ascontiguousarray(array).reshape(-1)
    return tensor_to_json(array)
