"""Text in, token ids out: the tokenizer and pooling shared by the transformers and onnx runtimes.

Tokenizers are built with the ``tokenizers`` library from ``tokenizer.json`` bytes that were
verified on read (importing it takes ~40 ms; ``transformers`` takes ~2 s). Truncation is set
to the model's maximum length and padding to the longest sequence of each batch, whatever
``tokenizer.json`` itself says (exports often carry a fixed padding of 128 that would change
the results for long inputs and waste work for short ones).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from podserve.errors import InvalidRequestError, ManifestError
from podserve.storage.manifest import TensorSpec

DEFAULT_MAX_LENGTH = 512
# Small JSON files that may say how long a model's inputs can be, in order of authority.
LENGTH_SOURCES = ("sentence_bert_config.json", "tokenizer_config.json", "config.json")


class TextEncoder:
    """Batch tokenisation to int64 arrays ``input_ids``, ``attention_mask``, ``token_type_ids``."""

    def __init__(self, tokenizer_json: bytes, max_length: int, where: str) -> None:
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise ManifestError(f"{where}: not a usable tokenizer.json: {exc}") from None
        tok.enable_truncation(max_length)
        padding = tok.padding or {}
        tok.enable_padding(
            pad_id=int(padding.get("pad_id", 0)),
            pad_type_id=int(padding.get("pad_type_id", 0)),
            pad_token=str(padding.get("pad_token", "[PAD]")),
        )
        self.tokenizer = tok
        self.max_length = max_length

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(texts)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }


def resolve_max_length(
    options: Mapping[str, Any], read_json: Callable[[str], dict[str, Any] | None]
) -> int:
    """``options.max_length``, else what the model's config files say, else 512.

    ``read_json(name)`` returns a verified JSON file of the version, or None when absent.
    sentence-transformers models cap inputs in ``sentence_bert_config.json`` (256 for
    MiniLM), which is what their embeddings are compared against.
    """
    if "max_length" in options:
        value = options["max_length"]
        if not isinstance(value, int) or value < 1:
            raise ManifestError("invalid field 'options.max_length': a positive integer")
        return value
    limits: list[int] = []
    st = read_json("sentence_bert_config.json") or {}
    if isinstance(st.get("max_seq_length"), int):
        return int(st["max_seq_length"])
    tc = read_json("tokenizer_config.json") or {}
    if isinstance(tc.get("model_max_length"), int) and tc["model_max_length"] < 1_000_000:
        limits.append(int(tc["model_max_length"]))
    cfg = read_json("config.json") or {}
    if isinstance(cfg.get("max_position_embeddings"), int):
        limits.append(int(cfg["max_position_embeddings"]))
    return min(limits) if limits else DEFAULT_MAX_LENGTH


def json_reader(
    has: Callable[[str], bool], small: Callable[[str], bytes]
) -> Callable[[str], dict[str, Any] | None]:
    """A ``read_json`` for :func:`resolve_max_length` over a version's verified files."""
    cache: dict[str, dict[str, Any] | None] = {}

    def read(name: str) -> dict[str, Any] | None:
        if name not in cache:
            cache[name] = None
            if has(name):
                try:
                    value = json.loads(small(name))
                except ValueError:
                    raise ManifestError(f"{name}: not valid JSON") from None
                cache[name] = value if isinstance(value, dict) else None
        return cache[name]

    return read


def check_text_input(spec: TensorSpec) -> None:
    """The text input is BYTES with one sentence per item (shape [] or [1])."""
    if spec.datatype != "BYTES" or spec.shape not in ((), (1,)):
        raise ManifestError(
            f"invalid field 'inputs.{spec.name}': text tasks take a BYTES input with shape [] "
            f"or [1] (one sentence per item), not {spec.datatype} {list(spec.shape)}"
        )


def texts_from(array: np.ndarray, spec: TensorSpec) -> tuple[list[str], tuple[int, ...]]:
    """UTF-8 sentences and the leading (batch) shape the outputs must keep."""
    lead = array.shape if spec.shape == () else array.shape[:-1]
    texts: list[str] = []
    for item in array.reshape(-1):
        if isinstance(item, bytes | bytearray | memoryview):
            try:
                texts.append(bytes(item).decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidRequestError(f"input '{spec.name}': not valid UTF-8") from None
        elif isinstance(item, str):
            texts.append(item)
        else:
            raise InvalidRequestError(f"input '{spec.name}': expected BYTES (text) elements")
    return texts, lead


def mean_pool(hidden: np.ndarray, mask: np.ndarray, normalize: bool) -> np.ndarray:
    """sentence-transformers' mean pooling (and Normalize) in numpy, for the onnx runtime."""
    m = mask[..., None].astype(hidden.dtype)
    pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
    if normalize:
        pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    out: np.ndarray = pooled.astype(np.float32, copy=False)
    return out
