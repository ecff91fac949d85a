"""The package's shape: every module imports on its own, and start-up stays lean."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "podserve"
MODULES = sorted(
    "podserve." + ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
    for p in SRC.rglob("*.py")
    if "_generated" not in p.parts and p.name != "__main__.py"
)


def _import_alone(module: str) -> tuple[str, int, str]:
    proc = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120
    )
    return module, proc.returncode, proc.stderr[-800:]


@pytest.mark.slow
def test_every_module_imports_on_its_own() -> None:
    """A fresh interpreter per module catches import cycles that test order would hide."""
    with ThreadPoolExecutor(2) as pool:
        failures = [r for r in pool.map(_import_alone, MODULES) if r[1] != 0]
    assert not failures, "\n".join(f"{m}: {err}" for m, _, err in failures)


def test_cli_start_imports_nothing_heavy() -> None:
    """``podserve --help`` and ``import podserve`` are on every pod's cold start path."""
    code = (
        "import sys, json; import podserve; from podserve.cli import build_parser; "
        "build_parser(); print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    heavy = {
        "torch",
        "transformers",
        "onnxruntime",
        "grpc",
        "aio_pika",
        "s3fs",
        "matplotlib",
        "tokenizers",
        "uvicorn",
        "numpy",
    }
    assert not heavy & loaded, f"heavy imports at start-up: {sorted(heavy & loaded)}"


def test_public_api_is_small() -> None:
    import podserve

    assert sorted(podserve.__all__) == ["Model", "PodserveError", "Settings", "__version__"]
    assert podserve.Model.__name__ == "Model"
    assert issubclass(podserve.PodserveError, Exception)
