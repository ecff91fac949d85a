"""A request checked against its model's manifest before it reaches the batcher."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from podserve.dataplane.validation import check_inputs, check_outputs
from podserve.errors import InvalidRequestError
from podserve.storage.manifest import Manifest, parse_manifest
from podserve.v2 import InferRequest, InferTensor, RequestedOutput


def manifest(max_batch_size: int = 8) -> Manifest:
    return parse_manifest(
        yaml.safe_dump(
            {
                "runtime": "python",
                "max_batch_size": max_batch_size,
                "inputs": [
                    {"name": "ids", "datatype": "INT64", "shape": [-1]},
                    {"name": "mask", "datatype": "INT64", "shape": [-1]},
                ],
                "outputs": [
                    {"name": "hidden", "datatype": "FP32", "shape": [-1, 4]},
                    {"name": "pooled", "datatype": "FP32", "shape": [4]},
                ],
            }
        )
    )


def tensor(name: str, shape: tuple[int, ...], datatype: str = "INT64") -> InferTensor:
    dtype = np.int64 if datatype == "INT64" else np.float32
    return InferTensor(name, datatype, shape, np.zeros(shape, dtype=dtype))


def request(*inputs: InferTensor, outputs: list[str] | None = None) -> InferRequest:
    wanted = None if outputs is None else [RequestedOutput(n) for n in outputs]
    return InferRequest("m", list(inputs), outputs=wanted)


def test_a_good_request_gives_its_arrays_by_name() -> None:
    ids, mask = tensor("ids", (2, 5)), tensor("mask", (2, 5))
    arrays = check_inputs(manifest(), request(ids, mask))
    assert list(arrays) == ["ids", "mask"]
    assert arrays["ids"] is ids.data


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ((tensor("ids", (2, 5)), tensor("ids", (2, 5))), "appears twice"),
        ((tensor("ids", (2, 5)), tensor("mask", (2, 5)), tensor("x", (2,))), "unknown input 'x'"),
        ((tensor("ids", (2, 5)),), "missing input 'mask'"),
        ((tensor("ids", (2, 5), "FP32"), tensor("mask", (2, 5))), "datatype FP32, expected INT64"),
        ((tensor("ids", (2, 5, 1)), tensor("mask", (2, 5))), r"shape \[2, 5, 1\] does not match"),
        ((tensor("ids", ()), tensor("mask", (2, 5))), "needs a batch dimension"),
        ((tensor("ids", (0, 5)), tensor("mask", (0, 5))), "empty batch"),
        ((tensor("ids", (2, 5)), tensor("mask", (3, 5))), "disagree on the batch size"),
    ],
)
def test_bad_inputs_are_refused_naming_the_problem(
    inputs: tuple[InferTensor, ...], message: str
) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        check_inputs(manifest(), request(*inputs))


def test_an_unbatched_model_takes_the_shape_as_declared() -> None:
    ids, mask = tensor("ids", (5,)), tensor("mask", (5,))
    assert set(check_inputs(manifest(max_batch_size=0), request(ids, mask))) == {"ids", "mask"}


def test_outputs_default_to_all_and_unknown_ones_are_refused() -> None:
    assert check_outputs(manifest(), request()) == ["hidden", "pooled"]
    assert check_outputs(manifest(), request(outputs=["pooled"])) == ["pooled"]
    with pytest.raises(InvalidRequestError, match="unknown output 'logits'"):
        check_outputs(manifest(), request(outputs=["logits"]))
