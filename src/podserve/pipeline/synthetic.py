"""A synthetic decoder model version, to try and measure pipelines without downloading one.

:func:`stage_synthetic_decoder` writes a random GPT-2-style decoder
(:func:`~podserve.runtime.architectures.decoder.write_random_decoder`), a word-level
tokenizer whose words are ``w0 … w<vocab-1>``, and a manifest for the transformers runtime
(text in, mean-pooled embedding out) into ``<root>/<name>/<version>``, so that the unsplit
model and its pipeline serve the same signature. 24 layers x 1152 hidden ≈ 1.5 GB (FP32).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from podserve.runtime.architectures.decoder import write_random_decoder
from podserve.storage.staging import stage_model


def word_tokenizer(vocab: int) -> str:
    """``tokenizer.json`` text: whitespace-split words ``w<i>`` → id i, others → [UNK] (1)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {"[PAD]": 0, "[UNK]": 1} | {f"w{i}": i for i in range(2, vocab)}
    unknown = "[UNK]"
    tok = Tokenizer(models.WordLevel(words, unknown))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    out: str = tok.to_str()
    return out


def stage_synthetic_decoder(
    root: Path,
    name: str = "decoder",
    version: str = "1",
    *,
    layers: int = 4,
    hidden: int = 64,
    vocab: int = 1024,
    seed: int = 0,
    max_length: int = 128,
) -> Path:
    """Stage a random decoder; returns its version directory."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    src = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=root))
    try:
        config = write_random_decoder(src, layers=layers, hidden=hidden, vocab=vocab, seed=seed)
        (src / "tokenizer.json").write_text(word_tokenizer(vocab), encoding="utf-8")
        manifest = {
            "runtime": "transformers",
            "description": f"synthetic decoder, {layers} layers x {hidden} hidden (random)",
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": []}],
            "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [config["n_embd"]]}],
            "max_batch_size": 32,
            "warmup": {"text": ["w2 w3 w4"]},
            "options": {"task": "embedding", "pooling": "mean", "max_length": max_length},
        }
        files = {n: src / n for n in ("model.safetensors", "config.json", "tokenizer.json")}
        dest = root / name / version
        stage_model(files, dest, manifest, overwrite=True)
    finally:
        shutil.rmtree(src, ignore_errors=True)
    return dest
