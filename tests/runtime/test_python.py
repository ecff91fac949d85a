"""The python runtime: a user class with load/infer, after every file is verified."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from podserve.errors import InferenceError, IntegrityError, ManifestError, ModelDirectoryError
from podserve.runtime.python import PythonModel
from podserve.storage.staging import stage_model
from tests.runtime.conftest import flip_byte, load

CODE = """
import json
from pathlib import Path

import numpy as np


class Scaler:
    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset
        self.factor = None

    def load(self, path: Path) -> None:
        self.factor = json.loads((path / "params.json").read_text())["factor"]

    def infer(self, inputs):
        x = inputs["x"]
        if (x < 0).any():
            raise ValueError("negative input")
        return {"y": x * self.factor + self.offset}
"""

MANIFEST = {
    "runtime": "python",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [2]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [2]}],
    "max_batch_size": 4,
    "options": {"module": "predictor.py:Scaler", "kwargs": {"offset": 1.0}},
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "predictor.py").write_text(CODE)
    (src / "params.json").write_text('{"factor": 3.0}')
    stage_model({p.name: p for p in src.iterdir()}, tmp_path / "repo" / "scaler" / "1", MANIFEST)
    return tmp_path / "repo"


def test_user_class_loads_and_infers(root: Path) -> None:
    model = load(root, "scaler")
    assert isinstance(model, PythonModel)
    x = np.array([[1.0, 2.0]], np.float32)
    np.testing.assert_array_equal(model.infer({"x": x})["y"], x * 3 + 1)
    assert model.report.verified == "blake3"
    assert model.report.bytes_read == model.version.listing.total_bytes
    with pytest.raises(InferenceError, match="ValueError: negative input"):
        model.infer({"x": -x})
    model.unload()


def test_data_file_is_verified_before_user_load(root: Path) -> None:
    path = root / "scaler" / "1" / "params.json"
    flip_byte(path, 2)
    with pytest.raises(IntegrityError, match=rf"^{path}: BLAKE3 checksum mismatch"):
        load(root, "scaler")


def test_size_only_skips_digests_and_says_so(root: Path) -> None:
    assert load(root, "scaler", verify="size").report.verified == "size"


def test_a_model_subclass_is_used_as_is(tmp_path: Path) -> None:
    code = (
        "import numpy as np\n"
        "from podserve import Model\n\n"
        "class Doubler(Model):\n"
        "    def load(self):\n"
        "        self.k = 2\n"
        "    def infer(self, inputs):\n"
        "        return {'y': inputs['x'] * self.k}\n"
    )
    src = tmp_path / "m.py"
    src.write_text(code)
    manifest = {**MANIFEST, "options": {"module": "m.py:Doubler"}}
    stage_model({"m.py": src}, tmp_path / "repo" / "d" / "1", manifest)
    model = load(tmp_path / "repo", "d")
    assert model.infer({"x": np.ones((1, 2), np.float32)})["y"].tolist() == [[2.0, 2.0]]


def test_broken_user_code_is_reported(tmp_path: Path) -> None:
    src = tmp_path / "bad.py"
    src.write_text("class Broken:\n    def load(self, path):\n        raise OSError('no gpu')\n")
    stage_model({"bad.py": src}, tmp_path / "repo" / "b" / "1",
                {**MANIFEST, "options": {"module": "bad.py:Broken"}})  # fmt: skip
    with pytest.raises(ModelDirectoryError, match=r"Broken\.load failed: OSError: no gpu"):
        load(tmp_path / "repo", "b")
    src.write_text("def f(:\n")
    stage_model({"bad.py": src}, tmp_path / "repo" / "s" / "1",
                {**MANIFEST, "options": {"module": "bad.py:X"}})  # fmt: skip
    with pytest.raises(ModelDirectoryError, match=r"bad\.py: failed to import: SyntaxError"):
        load(tmp_path / "repo", "s")
    stage_model({"bad.py": src}, tmp_path / "repo" / "n" / "1",
                {**MANIFEST, "options": {"module": "other.py:X"}})  # fmt: skip
    with pytest.raises(ManifestError, match=r"other\.py is not a file of"):
        load(tmp_path / "repo", "n")
