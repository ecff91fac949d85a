"""The transformers runtime on the real MiniLM, a tiny classifier and the fallback path."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from sentence_transformers import SentenceTransformer

from podserve.demo import demo_source
from podserve.errors import IntegrityError, ManifestError, UnsafeWeightsError
from podserve.runtime.transformers import TransformersModel
from podserve.storage.staging import stage_model
from tests.runtime.conftest import SENTENCES, flip_byte, load

TEXT_IN = [{"name": "text", "datatype": "BYTES", "shape": []}]


def _texts(items: list[str]) -> np.ndarray:
    return np.array([s.encode() for s in items], dtype=object)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    st = SentenceTransformer(str(demo_source()), device="cpu", local_files_only=True)
    return np.asarray(st.encode(SENTENCES, convert_to_numpy=True))


@pytest.mark.parametrize("strategy", ["mmap", "read"])
def test_demo_matches_sentence_transformers(
    demo_root: Path, reference: np.ndarray, strategy: str
) -> None:
    model = load(demo_root, "minilm", read_strategy=strategy)
    assert isinstance(model, TransformersModel)
    out = model.infer({"text": _texts(SENTENCES)})["embedding"]
    assert out.shape == (len(SENTENCES), 384)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    report = model.report
    assert report.verified == "blake3"
    assert report.device == "cpu"
    assert report.details["implementation"] == "lean:Bert"
    assert report.details["read_strategy"] == strategy
    assert report.bytes_read == model.version.listing.total_bytes  # every file was checked
    warm = model.infer(model.warmup_inputs())["embedding"]
    assert warm.shape == (1, 384)
    model.unload()


def test_size_only_is_reported(demo_root: Path) -> None:
    model = load(demo_root, "minilm", verify="size")
    assert model.report.verified == "size"
    # The weights and the files the runtime parses were read; README.md etc. were not hashed.
    listing = model.version.listing
    assert model.report.bytes_read < listing.total_bytes - listing.files["README.md"].size + 1


def test_per_item_shape_one_keeps_the_batch_shape(demo_root: Path, reference: np.ndarray) -> None:
    model = load(demo_root, "minilm")
    out = model.infer({"text": _texts(SENTENCES[:2]).reshape(2)})["embedding"]
    np.testing.assert_allclose(out, reference[:2], atol=1e-4)
    assert model.infer({"text": _texts([])})["embedding"].shape == (0, 384)


@pytest.mark.parametrize("strategy", ["mmap", "read"])
def test_corrupted_weight_byte_fails_load_naming_the_file(
    demo_root: Path, copy_version, strategy: str
) -> None:
    root = copy_version(demo_root, "minilm")
    weights = root / "minilm" / "1" / "model.safetensors"
    flip_byte(weights, weights.stat().st_size // 2)
    with pytest.raises(IntegrityError, match=rf"^{weights}: BLAKE3 checksum mismatch"):
        load(root, "minilm", read_strategy=strategy)
    # verify: size is an explicit opt-out, and then the damage goes unnoticed (reported)
    assert load(root, "minilm", verify="size").report.verified == "size"


@pytest.mark.parametrize("name", ["tokenizer.json", "README.md", "1_Pooling/config.json"])
def test_every_other_file_is_verified_before_ready(
    demo_root: Path, copy_version, name: str
) -> None:
    root = copy_version(demo_root, "minilm")
    path = root / "minilm" / "1" / name
    flip_byte(path, 10)
    with pytest.raises(IntegrityError, match=rf"^{path}: BLAKE3 checksum mismatch"):
        load(root, "minilm")


def test_classification_needs_a_classifier(tmp_path: Path) -> None:
    src = demo_source()
    names = ["config.json", "model.safetensors", "tokenizer.json"]
    stage_model({n: src / n for n in names}, tmp_path / "m" / "1", {
        "runtime": "transformers", "inputs": TEXT_IN, "max_batch_size": 4,
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [2]}],
        "options": {"task": "sequence-classification"},
    })  # fmt: skip
    with pytest.raises(ManifestError, match="needs a checkpoint with a classifier head"):
        load(tmp_path, "m")


def _tiny(tmp_path: Path, cls: type, config: transformers.PretrainedConfig) -> Path:
    torch.manual_seed(0)
    hf = cls(config).eval()
    src = tmp_path / "src"
    hf.save_pretrained(src)  # safetensors
    (src / "tokenizer.json").write_bytes((demo_source() / "tokenizer.json").read_bytes())
    return src


def _reference(src: Path, cls: type, texts: list[str], attr: str) -> np.ndarray:
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(src / "tokenizer.json"))
    tok.pad_token = "[PAD]"
    enc = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    hf = cls.from_pretrained(src, local_files_only=True).eval()
    with torch.inference_mode():
        out = getattr(hf(**enc), attr)
    if attr == "last_hidden_state":
        m = enc["attention_mask"][..., None].float()
        out = (out * m).sum(1) / m.sum(1)
    return out.numpy()


def test_sequence_classification_matches_transformers(tmp_path: Path) -> None:
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=3,
    )  # fmt: skip
    src = _tiny(tmp_path, transformers.BertForSequenceClassification, config)
    stage_model({p.name: p for p in src.iterdir()}, tmp_path / "repo" / "cls" / "1", {
        "runtime": "transformers", "inputs": TEXT_IN, "max_batch_size": 8,
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [3]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [3]}],
        "options": {"task": "sequence-classification"},
    })  # fmt: skip
    model = load(tmp_path / "repo", "cls")
    assert model.report.details["implementation"] == "lean:Bert"
    texts = ["a short one", "a somewhat longer sentence to classify here"]
    out = model.infer({"text": _texts(texts)})
    ref = _reference(src, transformers.BertForSequenceClassification, texts, "logits")
    np.testing.assert_allclose(out["logits"], ref, atol=1e-5)
    np.testing.assert_allclose(out["probabilities"], torch.tensor(ref).softmax(-1), atol=1e-6)


def test_family_without_lean_implementation_falls_back(tmp_path: Path) -> None:
    config = transformers.DistilBertConfig(
        vocab_size=30522, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64
    )
    src = _tiny(tmp_path, transformers.DistilBertModel, config)
    stage_model({p.name: p for p in src.iterdir()}, tmp_path / "repo" / "d" / "1", {
        "runtime": "transformers", "inputs": TEXT_IN, "max_batch_size": 8,
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [32]}],
        "options": {"task": "embedding"},
    })  # fmt: skip
    model = load(tmp_path / "repo", "d")
    assert model.report.details["implementation"] == "transformers:DistilBertModel"
    texts = ["first sentence", "and a second, longer, sentence"]
    out = model.infer({"text": _texts(texts)})["embedding"]
    ref = _reference(src, transformers.DistilBertModel, texts, "last_hidden_state")
    np.testing.assert_allclose(out, ref, atol=1e-5)


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_torch_load_only_when_opted_in_and_only_tensors(tmp_path: Path) -> None:
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    src = _tiny(tmp_path, transformers.BertModel, config)
    state = transformers.BertModel.from_pretrained(src).state_dict()
    torch.save(state, src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    manifest = {
        "runtime": "transformers", "inputs": TEXT_IN, "max_batch_size": 8,
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [32]}],
    }  # fmt: skip
    files = {p.name: p for p in src.iterdir()}
    # Without the opt-in, staging already refuses it (the server refuses such a version too:
    # tests/storage/test_repository.py).
    with pytest.raises(UnsafeWeightsError, match=r"pytorch_model\.bin: \.bin files are loaded"):
        stage_model(files, tmp_path / "repo" / "plain" / "1", manifest)
    stage_model(files, tmp_path / "repo" / "opted" / "1", {**manifest, "allow_torch_load": True})
    model = load(tmp_path / "repo", "opted")
    assert model.infer({"text": _texts(["hi"])})["embedding"].shape == (1, 32)
    # A pickle that would run code is refused by weights_only, even when opted in.
    (src / "pytorch_model.bin").write_bytes(pickle.dumps({"x": _Exploit()}))
    stage_model(files, tmp_path / "repo" / "evil" / "1", {**manifest, "allow_torch_load": True})
    with pytest.raises(UnsafeWeightsError, match=r"weights_only=True\) refused"):
        load(tmp_path / "repo", "evil")


def test_unknown_task_is_a_manifest_error(tmp_path: Path, demo_root: Path) -> None:
    src = demo_root / "minilm" / "1"
    names = ["config.json", "model.safetensors", "tokenizer.json"]
    stage_model({n: src / n for n in names}, tmp_path / "m" / "1", {
        "runtime": "transformers", "inputs": TEXT_IN,
        "outputs": [{"name": "e", "datatype": "FP32", "shape": [384]}],
        "options": {"task": "translation"},
    })  # fmt: skip
    with pytest.raises(ManifestError, match=r"invalid field 'options\.task'"):
        load(tmp_path, "m")
    assert json.loads((src / "config.json").read_text())["model_type"] == "bert"


def test_the_lean_path_never_imports_transformers(demo_root: Path) -> None:
    """transformers costs ~1 s of every cold start; the demo must not need it."""
    code = (
        "import sys\n"
        "from podserve.runtime.registry import create_model\n"
        "from podserve.settings import Settings\n"
        "from podserve.storage.repository import ModelRepository\n"
        f"m = create_model(ModelRepository({str(demo_root)!r}).open('minilm'), Settings())\n"
        "m.load()\n"
        "m.infer(m.warmup_inputs())\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in "
        "('transformers', 'sentence_transformers', 'onnxruntime')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
