"""Tensor codecs: numpy arrays ⇄ v2 JSON ``data`` lists and raw little-endian bytes.

The only place that knows how v2 datatypes map to numpy and how BYTES elements are framed
(4-byte little-endian length + bytes, as Triton's binary extension and gRPC's
``raw_*_contents`` do).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from podserve.errors import InvalidRequestError
from podserve.v2.types import to_numpy_dtype

# --- shapes -------------------------------------------------------------------------------


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidRequestError(f"input '{name}': shape must be a list of integers >= 0")
    return tuple(shape)


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


# --- JSON tensors ---------------------------------------------------------------------------


def tensor_from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """Build the array for a JSON ``data`` field (flat or nested, row-major)."""
    dtype = to_numpy_dtype(datatype)
    count = element_count(shape)
    if not isinstance(data, list):
        data = [data]
    if data and isinstance(data[0], list):
        # Flat data is always allowed; nested data must be nested as the declared shape.
        nested = _nested_shape(name, data)
        if nested != tuple(shape):
            raise InvalidRequestError(
                f"input '{name}': data is nested as {list(nested)}, but the shape is {list(shape)}"
            )
    if datatype == "BYTES":
        flat = _flatten(data)
        items = []
        for item in flat:
            if isinstance(item, str):
                items.append(item.encode("utf-8"))
            elif isinstance(item, bytes):
                items.append(item)
            else:
                raise InvalidRequestError(f"input '{name}': BYTES elements must be strings")
        arr = np.empty(len(items), dtype=object)
        arr[:] = items
    else:
        try:
            arr = np.asarray(data, dtype=dtype)
        except (ValueError, TypeError, OverflowError):
            raise InvalidRequestError(
                f"input '{name}': data does not match datatype {datatype}"
            ) from None
        if datatype == "BOOL" and not _all_bools(data):
            raise InvalidRequestError(f"input '{name}': BOOL data must be true/false")
        if datatype != "BOOL" and dtype.kind in "iu" and _has_float(arr, data):
            raise InvalidRequestError(f"input '{name}': {datatype} data must be integers")
    if arr.size != count:
        raise InvalidRequestError(
            f"input '{name}': shape {list(shape)} needs {count} elements, data has {arr.size}"
        )
    return arr.reshape(shape)


def _nested_shape(name: str, data: list[Any]) -> tuple[int, ...]:
    """The shape of a nested JSON list; ragged nesting is an error."""
    shape: list[int] = []
    level: Any = data
    while isinstance(level, list):
        shape.append(len(level))
        level = level[0] if level else None
    depth = len(shape)

    def check(node: Any, d: int) -> None:
        if d == depth:
            if isinstance(node, list):
                raise InvalidRequestError(f"input '{name}': data is nested unevenly")
            return
        if not isinstance(node, list) or len(node) != shape[d]:
            raise InvalidRequestError(f"input '{name}': data is nested unevenly")
        for child in node:
            check(child, d + 1)

    check(data, 0)
    return tuple(shape)


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _all_bools(data: list[Any]) -> bool:
    return all(isinstance(x, bool) for x in _flatten(data))


def _has_float(arr: np.ndarray, data: list[Any]) -> bool:
    return any(isinstance(x, float) for x in _flatten(data)) if arr.size < 4096 else False


def tensor_to_json(array: np.ndarray) -> list[Any]:
    """Flat row-major list for a JSON response (BYTES as UTF-8 text where possible)."""
    if array.dtype == object or array.dtype.kind in "SU":
        return [_bytes_to_text(x) for x in array.reshape(-1)]
    flat: list[Any] = array.reshape(-1).tolist()
    return flat


def _bytes_to_text(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    if isinstance(value, str):
        return value
    return str(value)


# --- raw (binary) tensors -----------------------------------------------------------------


def tensor_from_raw(
    name: str, datatype: str, shape: tuple[int, ...], raw: bytes | memoryview
) -> np.ndarray:
    """Decode Triton binary / gRPC raw contents; zero-copy for fixed-size datatypes."""
    count = element_count(shape)
    if datatype == "BYTES":
        return deserialize_bytes(name, raw, count).reshape(shape)
    dtype = to_numpy_dtype(datatype)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidRequestError(
            f"input '{name}': {datatype} shape {list(shape)} needs {expected} bytes, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def deserialize_bytes(name: str, raw: bytes | memoryview, count: int) -> np.ndarray:
    if count * 4 > len(raw):  # checked before allocating: a huge shape must not cost memory
        raise InvalidRequestError(
            f"input '{name}': {count} BYTES items need at least {count * 4} bytes, got {len(raw)}"
        )
    out = np.empty(count, dtype=object)
    view = memoryview(raw)
    pos, end = 0, len(view)
    unpack = struct.Struct("<I").unpack_from
    for i in range(count):
        if pos + 4 > end:
            raise InvalidRequestError(f"input '{name}': BYTES data ends after {i} of {count} items")
        (n,) = unpack(view, pos)
        pos += 4
        if pos + n > end:
            raise InvalidRequestError(f"input '{name}': BYTES item {i} runs past the data")
        out[i] = bytes(view[pos : pos + n])
        pos += n
    if pos != end:
        raise InvalidRequestError(
            f"input '{name}': {end - pos} trailing bytes after {count} BYTES items"
        )
    return out


def serialize_bytes(array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    pack = struct.Struct("<I").pack
    for item in array.reshape(-1):
        b = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def tensor_to_raw(array: np.ndarray) -> bytes | memoryview:
    """Raw little-endian bytes of a tensor (BYTES length-prefixed)."""
    if array.dtype == object or array.dtype.kind in "SU":
        return serialize_bytes(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    contiguous = np.ascontiguousarray(array)
    return memoryview(contiguous).cast("B")  # type: ignore[arg-type]  # numpy arrays are buffers
