"""podserve's identity model (``runtime: python``, ``module: model.py:Identity``)."""

from __future__ import annotations

import numpy as np


class Identity:
    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": inputs["x"]}
