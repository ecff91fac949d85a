"""scripts/trim-venv.sh, which the image's install stages run on the installed venv.

It removes what serving never loads and strips shared libraries; ``make image-test`` is what
proves the trimmed image still serves. Here: what goes, what stays, and that a stripped
extension module still imports.
"""

from __future__ import annotations

import _json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.test_dockerfile import DOCKERFILE, TARGETS, stages
from tests.tools import REPO

SCRIPT = REPO / "scripts" / "trim-venv.sh"
needs_strip = pytest.mark.skipif(not shutil.which("strip"), reason="no binutils strip here")


def fake_venv(root: Path) -> Path:
    """A venv holding the kinds of files trim-venv.sh decides about, and a real extension."""
    site = root / "lib" / "python3.11" / "site-packages"
    files = {
        "torch/__init__.py": "",
        "torch/__pycache__/__init__.cpython-311.pyc": "bytecode",
        "torch/test/test_x.py": "",
        "torch/include/ATen/x.h": "",
        "torch/share/cmake/Torch/TorchConfig.cmake": "",
        "torch/bin/torch_shm_manager": "needed by import torch",
        "torch/bin/test_api": "",
        "torch/bin/TCPStoreTest": "",
        "torch/bin/protoc-3.13.0.0": "",
        "torch/bin/script_module_v4.ptl": "",
        "torch/lib/libtorchbind_test.so": "",
        "torch/lib/libbackend_with_compiler.so": "",
        "onnxruntime/__init__.py": "",
        "onnxruntime/capi/__init__.py": "",
        "onnxruntime/tools/convert.py": "",
        "onnxruntime/quantization/quantize.py": "",
        "onnxruntime/transformers/optimizer.py": "",
        "numpy/core/lib/libnpymath.a": "",
        # Not an ELF file: stripping it would fail, so this also proves *.libs/ is skipped.
        "numpy.libs/libscipy_openblas64_.so": "as auditwheel vendored it",
    }
    for rel, text in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    shutil.copy2(json_extension(), site)
    return site


def json_extension() -> Path:
    """The interpreter's own _json extension module: a real ELF shared library."""
    path = getattr(_json, "__file__", "")
    if not path.endswith(".so"):
        pytest.skip("this interpreter has _json built in")
    return Path(path)


def trim(venv: Path, *flags: str) -> str:
    done = subprocess.run(
        ["sh", str(SCRIPT), *flags, str(venv)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_strip
def test_trim_removes_what_serving_never_loads(tmp_path: Path) -> None:
    site = fake_venv(tmp_path)
    module = site / json_extension().name
    assert "trim-venv:" in trim(tmp_path)
    left = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}
    assert left == {
        "torch/__init__.py",
        "torch/__pycache__/__init__.cpython-311.pyc",
        "torch/bin/torch_shm_manager",
        "onnxruntime/__init__.py",
        "onnxruntime/capi/__init__.py",
        "numpy.libs/libscipy_openblas64_.so",
        module.name,
    }
    assert (site / "numpy.libs/libscipy_openblas64_.so").read_text() == "as auditwheel vendored it"
    # The stripped extension module still loads (from the trimmed site-packages, not the stdlib).
    probe = f"import sys; sys.path.insert(0, {str(site)!r}); import _json; print(_json.__file__)"
    done = subprocess.run(
        [sys.executable, "-S", "-c", probe], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == str(module)


def test_keep_symbols_leaves_libraries_as_shipped(tmp_path: Path) -> None:
    site = fake_venv(tmp_path)
    (site / "lib_not_elf.so").write_text("would fail strip")
    trim(tmp_path, "--keep-symbols")
    assert (site / "lib_not_elf.so").read_text() == "would fail strip"
    assert not (site / "torch" / "test").exists()


def test_a_missing_venv_fails(tmp_path: Path) -> None:
    done = subprocess.run(["sh", str(SCRIPT), str(tmp_path)], capture_output=True, check=False)
    assert done.returncode == 2


@pytest.mark.parametrize("target", TARGETS)
def test_each_target_copies_a_trimmed_venv(target: str) -> None:
    _, found = stages(DOCKERFILE.read_text())
    copies = [rest for keyword, rest in found[target][1] if keyword == "COPY"]
    assert f"--from={target}-venv /opt/podserve/ /opt/podserve/" in copies
    runs = " ".join(rest for keyword, rest in found[f"{target}-venv"][1] if keyword == "RUN")
    assert "--require-hashes" in runs
    assert runs.rstrip().endswith("/opt/podserve"), "trimming is the install step's last command"
    assert "trim-venv" in runs
