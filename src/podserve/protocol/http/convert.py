"""What only REST adds to the v2 body codecs (:mod:`podserve.v2.codecs`): the
``Inference-Header-Content-Length`` header, and Triton's *raw binary request*.

``Inference-Header-Content-Length: 0`` is the raw binary request: the whole body is the data of
the model's single input, its datatype and shape taken from the model's metadata (a batch of
one; one variable dimension deduced from the byte count; a BYTES input is one element holding
the whole body), and every output comes back binary.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from podserve.errors import InvalidRequestError
from podserve.v2.tensors import tensor_from_raw
from podserve.v2.types import InferRequest, InferTensor, to_numpy_dtype


def parse_header_length(value: bytes | None, body_size: int) -> int | None:
    """The ``Inference-Header-Content-Length`` value, checked against the body."""
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise InvalidRequestError(
            f"Inference-Header-Content-Length must be an integer, got {value[:40]!r}"
        ) from None
    if length < 0 or length > body_size:
        raise InvalidRequestError(
            f"Inference-Header-Content-Length {length} does not fit a body of {body_size} bytes"
        )
    return length


def decode_raw(
    body: bytes, model_name: str, model_version: str | None, metadata: dict[str, Any]
) -> InferRequest:
    """Triton's raw binary request: the body is the data of the model's only input."""
    specs = metadata["inputs"]
    if len(specs) != 1:
        raise InvalidRequestError(
            "a raw binary request (Inference-Header-Content-Length: 0) needs a model with "
            f"exactly one input; model '{model_name}' has {len(specs)}"
        )
    spec = specs[0]
    name, datatype = spec["name"], spec["datatype"]
    dims = list(spec["shape"])
    if metadata["parameters"].get("max_batch_size", 0) > 0 and dims:
        dims[0] = 1
    if datatype == "BYTES":
        shape = tuple(1 if d == -1 else d for d in dims)
        if math.prod(shape) != 1:
            raise InvalidRequestError(
                f"a raw binary request to BYTES input '{name}' needs a one-element shape"
            )
        array = np.empty(1, dtype=object)
        array[0] = body
        array = array.reshape(shape)
    else:
        itemsize = to_numpy_dtype(datatype).itemsize
        variable = [i for i, d in enumerate(dims) if d == -1]
        known = math.prod(d for d in dims if d != -1) * itemsize
        if len(variable) > 1 or known == 0 or len(body) % known:
            raise InvalidRequestError(
                f"cannot deduce the shape of input '{name}' {dims} ({datatype}) from a raw "
                f"body of {len(body)} bytes"
            )
        if variable:
            dims[variable[0]] = len(body) // known
        shape = tuple(dims)
        array = tensor_from_raw(name, datatype, shape, body)
    return InferRequest(
        model_name=model_name,
        inputs=[InferTensor(name, datatype, shape, array)],
        model_version=model_version,
        parameters={"binary_data_output": True},
    )
