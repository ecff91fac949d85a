"""Small test models shared by the HTTP, gRPC and queue surface tests.

Each class is a real :class:`~podserve.runtime.model.Model`; :data:`MODELS` gives the manifest
each is staged with (``tests/conftest.py``'s ``staged_repo`` fixture stages them all and
``model_factory`` maps a model name to its class). ``expected(name, inputs)`` computes what the
server must answer, from a direct call of the same class, so surface tests compare wire answers
with direct model calls.

| name        | inputs → outputs                                        | batching |
|-------------|---------------------------------------------------------|----------|
| identity    | INPUT0 FP32 [384] → OUTPUT0 (copy)                      | 32       |
| add_sub     | INPUT0, INPUT1 INT32 [16] → OUTPUT0 = a+b, OUTPUT1 = a-b | 8        |
| all_types   | one input per v2 datatype ``IN_<DT>`` [-1] → ``OUT_<DT>`` (copy) | 8 |
| strings     | INPUT0 BYTES [-1] → OUTPUT0 upper-cased, OUTPUT1 INT32 lengths | 8  |
| slow        | INPUT0 FP32 [1] → OUTPUT0, sleeps ``SLOW_SECONDS``        | 4        |
| nobatch     | INPUT0 FP32 [2, 3] → OUTPUT0 = 2*x (no batch axis)      | 0        |
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from podserve.runtime.model import Model
from podserve.settings import Settings
from podserve.storage.manifest import DATATYPES
from podserve.storage.repository import ModelVersion
from podserve.storage.staging import stage_model

SLOW_SECONDS = 2.0


class _Base(Model):
    def load(self) -> None:
        self.report.verified = "none"


class Identity(_Base):
    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"OUTPUT0": inputs["INPUT0"]}


class AddSub(_Base):
    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        a, b = inputs["INPUT0"], inputs["INPUT1"]
        return {"OUTPUT0": a + b, "OUTPUT1": a - b}


class AllTypes(_Base):
    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {f"OUT_{dt}": inputs[f"IN_{dt}"].copy() for dt in DATATYPES}


class Strings(_Base):
    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["INPUT0"]
        upper = np.empty(x.shape, dtype=object)
        lengths = np.empty(x.shape, dtype=np.int32)
        for idx, item in np.ndenumerate(x):
            upper[idx] = bytes(item).upper()
            lengths[idx] = len(item)
        return {"OUTPUT0": upper, "OUTPUT1": lengths}


class Slow(_Base):
    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(SLOW_SECONDS if self.report.details.get("warm") else 0.0)
        self.report.details["warm"] = True
        return {"OUTPUT0": inputs["INPUT0"]}


class NoBatch(_Base):
    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"OUTPUT0": inputs["INPUT0"] * 2}


def _t(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


MODELS: dict[str, tuple[type[Model], dict[str, Any]]] = {
    "identity": (
        Identity,
        {
            "inputs": [_t("INPUT0", "FP32", [384])],
            "outputs": [_t("OUTPUT0", "FP32", [384])],
            "max_batch_size": 32,
            "batching": {"max_queue_delay_ms": 1.0},
        },
    ),
    "add_sub": (
        AddSub,
        {
            "inputs": [_t("INPUT0", "INT32", [16]), _t("INPUT1", "INT32", [16])],
            "outputs": [_t("OUTPUT0", "INT32", [16]), _t("OUTPUT1", "INT32", [16])],
            "max_batch_size": 8,
        },
    ),
    "all_types": (
        AllTypes,
        {
            "inputs": [_t(f"IN_{dt}", dt, [-1]) for dt in DATATYPES],
            "outputs": [_t(f"OUT_{dt}", dt, [-1]) for dt in DATATYPES],
            "max_batch_size": 8,
        },
    ),
    "strings": (
        Strings,
        {
            "inputs": [_t("INPUT0", "BYTES", [-1])],
            "outputs": [_t("OUTPUT0", "BYTES", [-1]), _t("OUTPUT1", "INT32", [-1])],
            "max_batch_size": 8,
        },
    ),
    "slow": (
        Slow,
        {
            "inputs": [_t("INPUT0", "FP32", [1])],
            "outputs": [_t("OUTPUT0", "FP32", [1])],
            "max_batch_size": 4,
            "batching": {"max_queue_delay_ms": 0.0},
        },
    ),
    "nobatch": (
        NoBatch,
        {
            "inputs": [_t("INPUT0", "FP32", [2, 3])],
            "outputs": [_t("OUTPUT0", "FP32", [2, 3])],
            "max_batch_size": 0,
        },
    ),
}


def stage_all(root: Path, names: list[str] | None = None) -> Path:
    """Stage the test models (all, or ``names``) as version 1 under ``root``."""
    weights = root.parent / f".{root.name}-weights.txt"
    weights.write_text("test model: no weights\n", encoding="utf-8")
    for name in names or list(MODELS):
        _, manifest = MODELS[name]
        stage_model({"weights.txt": weights}, root / name / "1", {"runtime": "python", **manifest})
    return root


def model_factory(version: ModelVersion, settings: Settings) -> Model:
    """The DataPlane ``factory``: model name → test class."""
    cls, _ = MODELS[version.name]
    return cls(version, settings)


def expected(name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What a direct call of the model class answers (no server involved)."""
    cls, _ = MODELS[name]
    model = cls.__new__(cls)
    Model.__init__(model, None, Settings())  # type: ignore[arg-type]
    if isinstance(model, Slow):
        model.report.details["warm"] = False
    return model.infer(inputs)
