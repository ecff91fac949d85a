"""External tools the deployment tests run: the venv's kubectl and hadolint, KEDA's CRDs."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# KEDA's CRDs ship in the package (src/podserve/kube/crds, with their source and licence).
KEDA_SCHEMAS = REPO / "src" / "podserve" / "kube" / "crds" / "keda"


def venv_tool(name: str) -> str | None:
    """The tool next to this interpreter (the venv's bin), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)
