"""Models for the tensor-parallel tests: MiniLM and a small synthetic decoder (2 heads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from podserve.demo import stage_demo
from podserve.pipeline.synthetic import stage_synthetic_decoder


@pytest.fixture(scope="session")
def tp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tp-models")
    stage_demo(root)
    stage_synthetic_decoder(root, "decoder", layers=3, hidden=128)  # 2 heads: K = 2 divides
    return root
