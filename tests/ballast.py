"""A ``runtime: python`` model of a chosen size, for the residency tests and benchmark.

``load`` reads its ``weights.raw`` (N bytes) into memory, as a real model reads its weights;
``infer`` answers ``OUTPUT0 = INPUT0`` after sleeping ``sleep`` seconds (the warm-up too
when ``sleep_warmup``); ``load_sleep`` slows the load. :func:`stage_ballast` stages one.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from podserve.storage.staging import stage_model

MIB = 2**20


class Predictor:
    def __init__(self, sleep: float = 0.0, load_sleep: float = 0.0) -> None:
        self.sleep, self.load_sleep = sleep, load_sleep
        self.weights: np.ndarray | None = None
        self.warm = False

    def load(self, path: str) -> None:
        time.sleep(self.load_sleep)
        self.weights = np.fromfile(Path(path) / "weights.raw", dtype=np.uint8)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.warm:
            time.sleep(self.sleep)
        self.warm = True
        assert self.weights is not None
        return {"OUTPUT0": inputs["INPUT0"] + self.weights[0]}

    def unload(self) -> None:
        self.weights = None


def stage_ballast(
    root: Path, name: str, nbytes: int, *, residency: str = "on-demand", **kwargs: Any
) -> None:
    """Stage ``name`` version 1 under ``root``: ``nbytes`` of weights, this file as its code."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.raw"
        with open(weights, "wb") as f:
            f.truncate(nbytes)  # zeros; read into anonymous memory at load
        spec = {"name": "INPUT0", "datatype": "FP32", "shape": [4]}
        manifest = {
            "runtime": "python",
            "inputs": [spec],
            "outputs": [{**spec, "name": "OUTPUT0"}],
            "max_batch_size": 8,
            "batching": {"policy": "fixed_delay", "max_queue_delay_ms": 0.0},
            "residency": residency,
            "options": {"module": "model.py:Predictor", "kwargs": kwargs},
        }
        files = {"weights.raw": weights, "model.py": Path(__file__)}
        stage_model(files, root / name / "1", manifest)
