"""The Open Inference Protocol (v2) vocabulary below every surface and the data plane.

:mod:`~podserve.v2.types` (requests, responses, datatypes), :mod:`~podserve.v2.tensors` (numpy ⇄
JSON lists and raw bytes), :mod:`~podserve.v2.codecs` (v2 JSON bodies with Triton's binary
tensors, as REST and the queue carry them) and :mod:`~podserve.v2.compression`.
"""

from podserve.v2.types import (
    DATATYPES,
    InferRequest,
    InferResponse,
    InferTensor,
    RequestedOutput,
    output_tensor,
    to_datatype,
    to_numpy_dtype,
)

__all__ = [
    "DATATYPES",
    "InferRequest",
    "InferResponse",
    "InferTensor",
    "RequestedOutput",
    "output_tensor",
    "to_datatype",
    "to_numpy_dtype",
]
