"""The Open Inference Protocol (v2) vocabulary every layer shares: datatypes and the decoded
request and response.

Surfaces decode their wire format into :class:`InferRequest` (numpy arrays already built), the
data plane answers with an :class:`InferResponse`; the codecs that build them live beside this
module (:mod:`podserve.v2.tensors`, :mod:`podserve.v2.codecs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from podserve.errors import InvalidRequestError

_NUMPY = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_V2 = {np.dtype(v).newbyteorder("="): k for k, v in _NUMPY.items() if k != "BYTES"}
_V2.update({np.dtype(v).newbyteorder("<"): k for k, v in _NUMPY.items() if k != "BYTES"})
_V2[np.dtype(object)] = "BYTES"
DATATYPES = tuple(_NUMPY)


def to_numpy_dtype(datatype: str) -> np.dtype[Any]:
    try:
        return _NUMPY[datatype]
    except KeyError:
        raise InvalidRequestError(
            f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
        ) from None


def to_datatype(array: np.ndarray) -> str:
    """The v2 datatype of a numpy array (str and bytes arrays are BYTES)."""
    dt = array.dtype
    if dt.kind in "SUO":
        return "BYTES"
    try:
        return _V2[dt]
    except KeyError:
        raise InvalidRequestError(f"numpy dtype {dt} has no v2 datatype") from None


@dataclass(slots=True)
class InferTensor:
    """A named tensor with its data as a numpy array of exactly ``shape``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def binary(self) -> bool | None:
        value = self.parameters.get("binary_data")
        return None if value is None else bool(value)


@dataclass(slots=True)
class InferRequest:
    """A decoded request. ``timeout_us`` and ``priority`` come from the client's parameters."""

    model_name: str
    inputs: list[InferTensor]
    model_version: str | None = None
    id: str | None = None
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def timeout_s(self) -> float | None:
        value = self.parameters.get("timeout")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequestError(
                f"parameter 'timeout' must be a number (microseconds), not a {type(value).__name__}"
            )
        if not 0 <= value < math.inf:  # NaN fails too
            raise InvalidRequestError(
                f"parameter 'timeout' must be >= 0 microseconds (0 = none), got {value!r}"
            )
        return value / 1e6 if value > 0 else None

    @property
    def priority(self) -> int:
        value = self.parameters.get("priority", 0)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequestError(
                f"parameter 'priority' must be an integer, got {str(value)[:40]!r}"
            )
        return value


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[InferTensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def output_tensor(name: str, array: np.ndarray) -> InferTensor:
    return InferTensor(name, to_datatype(array), tuple(array.shape), array)
