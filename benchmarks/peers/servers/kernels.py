"""The two models every peer serves, built the same way in every server process.

Each peer script imports this file (it sits beside them), so identity and MiniLM are the
same code and the same onnxruntime settings everywhere: intra-op threads from
``PEERS_INTRA_OP``, one inter-op thread, onnxruntime's defaults otherwise (as podserve's
``onnx`` runtime builds its session).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

IDENTITY = "identity"
MINILM = "minilm"
IDENTITY_IN, IDENTITY_OUT = "x", "y"
MINILM_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MINILM_OUT = "last_hidden_state"
WIDTH = 384


def intra_op() -> int:
    return int(os.environ.get("PEERS_INTRA_OP", "1"))


def batching() -> bool:
    return os.environ.get("PEERS_BATCHING", "0") == "1"


def max_batch() -> int:
    return int(os.environ.get("PEERS_MAX_BATCH", "32"))


def delay_ms() -> float:
    return float(os.environ.get("PEERS_DELAY_MS", "2"))


def minilm_session() -> Any:
    """One onnxruntime session over the int8 MiniLM at ``PEERS_MINILM``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op()
    so.inter_op_num_threads = 1
    return ort.InferenceSession(os.environ["PEERS_MINILM"], so, providers=["CPUExecutionProvider"])


def run_minilm(session: Any, feed: dict[str, np.ndarray]) -> np.ndarray:
    feed = {k: np.asarray(feed[k], dtype=np.int64) for k in MINILM_INPUTS}
    (hidden,) = session.run([MINILM_OUT], feed)
    return np.asarray(hidden, dtype=np.float32)
