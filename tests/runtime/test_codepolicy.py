"""The code policy: a manifest chooses code only as far as the operator allows."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from podserve.errors import CodePolicyError
from podserve.runtime.codepolicy import check_kwargs, check_module_allowed
from podserve.settings import Settings
from podserve.storage.staging import stage_model
from tests.runtime.conftest import load

MANIFEST: dict[str, Any] = {
    "runtime": "python",
    "max_batch_size": 4,
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [2]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [2]}],
}

# Executed only if the policy lets model.py run: it leaves a marker file.
MARKER_PY = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")

class Echo:
    def infer(self, inputs):
        return {{"y": inputs["x"]}}
"""


def _stage(root: Path, name: str, options: dict[str, Any], files: dict[str, Path]) -> None:
    stage_model(files, root / name / "1", {**MANIFEST, "options": options})


def _weights(tmp_path: Path) -> dict[str, Path]:
    path = tmp_path / "src" / "w.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("w")
    return {"w.txt": path}


def test_popen_in_a_manifest_starts_no_process(tmp_path: Path) -> None:
    marker = tmp_path / "popen-ran"
    options = {"module": "subprocess:Popen", "kwargs": {"args": ["touch", str(marker)]}}
    _stage(tmp_path / "repo", "popen", options, _weights(tmp_path))
    with pytest.raises(CodePolicyError, match=r"module 'subprocess' is not allowed"):
        load(tmp_path / "repo", "popen", allow_volume_code="no", allowed_modules=[])
    assert not marker.exists()


def test_a_module_outside_the_allow_list_is_never_imported(tmp_path: Path) -> None:
    name = "podserve_policy_probe_xyz"
    pkg = tmp_path / "site" / f"{name}.py"
    pkg.parent.mkdir()
    pkg.write_text("import pathlib\npathlib.Path(__file__).with_suffix('.ran').touch()\n")
    sys.path.insert(0, str(pkg.parent))
    try:
        _stage(tmp_path / "repo", "probe", {"module": f"{name}:X"}, _weights(tmp_path))
        with pytest.raises(CodePolicyError, match=rf"module '{name}' is not allowed"):
            load(tmp_path / "repo", "probe", allowed_modules=["mycompany"])
        assert not pkg.with_suffix(".ran").exists()
        assert name not in sys.modules
    finally:
        sys.path.remove(str(pkg.parent))


def test_allowed_prefixes_match_whole_components() -> None:
    settings = Settings(allowed_modules=["mycompany.models"])
    check_module_allowed("mycompany.models", settings, None)
    check_module_allowed("mycompany.models.bert", settings, None)
    check_module_allowed("podserve.runtime.python", settings, None)
    for target in ("mycompany.modelsevil", "mycompany", "os"):
        with pytest.raises(CodePolicyError):
            check_module_allowed(target, settings, None)


@pytest.mark.parametrize("mode", ["no", "signed"])
def test_volume_code_runs_only_when_allowed(tmp_path: Path, mode: str) -> None:
    marker = tmp_path / f"model-py-ran-{mode}"
    src = tmp_path / "src" / "model.py"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text(MARKER_PY.format(marker=str(marker)))
    _stage(tmp_path / "repo", "code", {"module": "model.py:Echo"}, {"model.py": src})
    with pytest.raises(CodePolicyError, match=r"model\.py is code from the model volume"):
        load(tmp_path / "repo", "code", allow_volume_code=mode)
    assert not marker.exists()
    model = load(tmp_path / "repo", "code", allow_volume_code="yes")
    assert marker.exists()
    x = np.ones((1, 2), np.float32)
    np.testing.assert_array_equal(model.infer({"x": x})["y"], x)


def test_volume_code_defaults_to_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PODSERVE_ALLOW_VOLUME_CODE", raising=False)
    monkeypatch.delenv("PODSERVE_ALLOWED_MODULES", raising=False)
    settings = Settings()
    assert settings.allow_volume_code == "no"
    assert settings.allowed_modules == []


@pytest.mark.parametrize(
    ("kwargs", "where"),
    [
        ({"when": datetime.date(2024, 1, 1)}, "options.kwargs.when"),
        ({"blob": b"\x00"}, "options.kwargs.blob"),
        ({"items": [1, {2, 3}]}, r"options.kwargs.items\[1\]"),
        ({"nested": {1: "x"}}, "options.kwargs.nested"),
    ],
)
def test_kwargs_are_plain_data(kwargs: dict[str, Any], where: str) -> None:
    with pytest.raises(CodePolicyError, match=where):
        check_kwargs(kwargs)


def test_plain_kwargs_pass() -> None:
    value = {"a": 1, "b": [1.5, "x", None, True], "c": {"d": {"e": []}}}
    assert check_kwargs(value) == value
