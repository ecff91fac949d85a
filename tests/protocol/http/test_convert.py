"""What only REST adds to the v2 body: Inference-Header-Content-Length, raw binary requests."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from podserve.errors import InvalidRequestError
from podserve.protocol.http.convert import decode_raw, parse_header_length


def metadata(datatype: str, shape: list[int], max_batch_size: int = 8) -> dict[str, Any]:
    return {
        "inputs": [{"name": "x", "datatype": datatype, "shape": shape}],
        "parameters": {"max_batch_size": max_batch_size},
    }


def test_the_header_length_is_checked_against_the_body() -> None:
    assert parse_header_length(None, 10) is None
    assert parse_header_length(b"4", 10) == 4
    with pytest.raises(InvalidRequestError, match="must be an integer"):
        parse_header_length(b"four", 10)
    with pytest.raises(InvalidRequestError, match="does not fit a body of 10 bytes"):
        parse_header_length(b"11", 10)


def test_a_raw_body_fills_the_only_input_deducing_its_variable_dimension() -> None:
    body = np.arange(8, dtype="<f4").tobytes()
    req = decode_raw(body, "m", None, metadata("FP32", [-1, -1, 2]))
    (tensor,) = req.inputs
    assert tensor.shape == (1, 4, 2)
    assert tensor.data.reshape(-1).tolist() == list(range(8))
    assert req.parameters == {"binary_data_output": True}


def test_a_raw_bytes_body_is_one_element() -> None:
    req = decode_raw(b"any bytes", "m", "1", metadata("BYTES", [-1, 1]))
    assert req.inputs[0].data.tolist() == [[b"any bytes"]]


def test_raw_bodies_that_cannot_fit_are_refused() -> None:
    with pytest.raises(InvalidRequestError, match="cannot deduce the shape"):
        decode_raw(b"12345", "m", None, metadata("FP32", [-1, 2]))
    two = {"inputs": [{}, {}], "parameters": {"max_batch_size": 0}}
    with pytest.raises(InvalidRequestError, match="exactly one input"):
        decode_raw(b"", "m", None, two)
