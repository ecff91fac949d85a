"""Shared pytest fixtures.

Each section belongs to the surface that wrote it; add your own section rather than editing
another's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# --- test models for the serving surfaces (HTTP, gRPC, queue): see tests/models.py ----------


@pytest.fixture
def staged_repo(tmp_path: Path) -> Path:
    """A model repository root with every model of ``tests/models.py`` staged as version 1.

    Serve it with ``DataPlane(ModelRepository(root), Settings(...), factory=model_factory)``.
    """
    from tests.models import stage_all

    return stage_all(tmp_path / "models")
