"""Device placement: the manifest wins, explicit requests fail loudly when unmet."""

from __future__ import annotations

from typing import Any

import pytest

from podserve.errors import AcceleratorUnavailableError, ConfigurationError
from podserve.runtime.placement import choose_device, cuda_device_count
from podserve.settings import Settings
from podserve.storage.manifest import Manifest


def _manifest(**fields: Any) -> Manifest:
    return Manifest.model_validate({
        "runtime": "torch",
        "inputs": [{"name": "x", "datatype": "FP32"}],
        "outputs": [{"name": "y", "datatype": "FP32"}],
        **fields,
    })  # fmt: skip


@pytest.mark.parametrize(
    ("manifest", "setting", "count", "expected"),
    [
        ({}, "auto", 0, "cpu"),
        ({}, "auto", 2, "cuda"),
        ({}, "cpu", 2, "cpu"),
        ({"device": "cpu"}, "cuda", 2, "cpu"),
        ({"device": "cuda:1"}, "auto", 2, "cuda:1"),
        ({}, "cuda:0", 1, "cuda:0"),
        ({"require_accelerator": True}, "auto", 1, "cuda"),
    ],
)
def test_choices(manifest: dict[str, Any], setting: str, count: int, expected: str) -> None:
    assert choose_device(_manifest(**manifest), Settings(device=setting), count) == expected


@pytest.mark.parametrize(
    ("manifest", "setting", "count", "message"),
    [
        ({"require_accelerator": True}, "auto", 0, "require_accelerator: true"),
        ({"require_accelerator": True}, "cpu", 4, "would run on the CPU"),
        ({"device": "cuda"}, "auto", 0, "no CUDA device is visible"),
        ({"device": "cuda:3"}, "auto", 2, "only 2 CUDA device"),
    ],
)
def test_unmet_requests_raise(
    manifest: dict[str, Any], setting: str, count: int, message: str
) -> None:
    with pytest.raises(AcceleratorUnavailableError, match=message):
        choose_device(_manifest(**manifest), Settings(device=setting), count)


def test_bad_setting() -> None:
    with pytest.raises(ConfigurationError, match="device 'gpu'"):
        choose_device(_manifest(), Settings(device="gpu"), 0)


def test_detection_matches_torch() -> None:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert cuda_device_count() == count
    assert choose_device(_manifest(), Settings()) == ("cuda" if count else "cpu")
