"""The torch runtime: a user nn.Module from the version dir or an importable module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from podserve.errors import (
    IntegrityError,
    InvalidRequestError,
    ManifestError,
    ModelDirectoryError,
    UnsafeWeightsError,
)
from podserve.runtime.torch import TorchModel
from podserve.storage.staging import stage_model
from tests.runtime.conftest import flip_byte, load

NET = """
import torch
from pathlib import Path


class Net(torch.nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(4, hidden)
        self.fc2 = torch.nn.Linear(hidden, 2)
        self.register_buffer("scale", torch.ones(2))

    def forward(self, x):
        y = self.fc2(torch.relu(self.fc1(x))) * self.scale
        return y, y.argmax(dim=1)

# padding that a same-size tampering can eat: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx
"""

MANIFEST = {
    "runtime": "torch",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}],
    "outputs": [
        {"name": "scores", "datatype": "FP32", "shape": [2]},
        {"name": "label", "datatype": "INT64", "shape": []},
    ],
    "max_batch_size": 8,
    "options": {"module": "model.py:Net", "kwargs": {"hidden": 16}},
}


def _reference() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    namespace: dict[str, object] = {}
    exec(compile(NET, "net", "exec"), namespace)  # noqa: S102 - the test's own code
    torch.manual_seed(0)
    net = namespace["Net"](hidden=16).eval()  # type: ignore[operator]
    with torch.no_grad():
        net.scale.fill_(2.0)
    return net, {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.fixture
def version_src(tmp_path: Path) -> dict[str, Path]:
    _, state = _reference()
    src = tmp_path / "src"
    src.mkdir()
    save_file(state, str(src / "model.safetensors"))
    (src / "model.py").write_text(NET)
    return {"model.safetensors": src / "model.safetensors", "model.py": src / "model.py"}


@pytest.mark.parametrize("strategy", ["mmap", "read"])
def test_user_module_from_the_version_dir(
    tmp_path: Path, version_src: dict[str, Path], strategy: str
) -> None:
    dest = tmp_path / "repo" / "net" / "1"
    stage_model(version_src, dest, MANIFEST)
    model = load(tmp_path / "repo", "net", read_strategy=strategy)
    assert isinstance(model, TorchModel)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    x.setflags(write=False)  # request buffers decoded from the wire are read-only
    out = model.infer({"x": x})
    net, _ = _reference()
    with torch.no_grad():
        scores, label = net(torch.from_numpy(x.copy()))
    np.testing.assert_allclose(out["scores"], scores.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(out["label"], label.numpy())
    assert out["label"].dtype == np.int64
    assert model.report.verified == "blake3"
    assert model.report.bytes_read == model.version.listing.total_bytes
    assert sorted(dest.iterdir()) == sorted(  # nothing written under the version (no pycache)
        dest / n for n in ["SHA256SUMS", "model.py", "model.safetensors", "podserve.yaml"]
    )
    with pytest.raises(InvalidRequestError, match="input 'x' is required"):
        model.infer({})


def test_weights_are_views_of_the_mapping(tmp_path: Path, version_src: dict[str, Path]) -> None:
    stage_model(version_src, tmp_path / "repo" / "net" / "1", MANIFEST)
    model = load(tmp_path / "repo", "net")
    buf = model._buffers[0].data
    weight = model._module.fc1.weight
    assert buf.ctypes.data <= weight.data_ptr() < buf.ctypes.data + buf.nbytes


def test_importable_module_with_kwargs(tmp_path: Path) -> None:
    torch.manual_seed(1)
    linear = torch.nn.Linear(3, 2)
    src = tmp_path / "w.safetensors"
    save_file({k: v.detach() for k, v in linear.state_dict().items()}, str(src))
    stage_model({"w.safetensors": src}, tmp_path / "repo" / "lin" / "1", {
        "runtime": "torch", "max_batch_size": 4,
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [3]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [2]}],
        "options": {"module": "torch.nn:Linear",
                    "kwargs": {"in_features": 3, "out_features": 2}},
    })  # fmt: skip
    model = load(tmp_path / "repo", "lin", allowed_modules=["torch.nn"])
    x = np.ones((2, 3), np.float32)
    with torch.no_grad():
        expected = linear(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.infer({"input": x})["y"], expected, rtol=1e-6)


def test_tampered_model_code_is_never_executed(
    tmp_path: Path, version_src: dict[str, Path]
) -> None:
    dest = tmp_path / "repo" / "net" / "1"
    stage_model(version_src, dest, MANIFEST)
    marker = tmp_path / "ran"
    code = (dest / "model.py").read_text()
    payload = f"open({str(marker)!r}, 'w').close()\n"
    (dest / "model.py").write_text(payload + code[: -len(payload)])  # same size, valid Python
    with pytest.raises(IntegrityError, match=rf"^{dest / 'model.py'}: BLAKE3 checksum mismatch"):
        load(tmp_path / "repo", "net")
    assert not marker.exists()


@pytest.mark.parametrize("strategy", ["mmap", "read"])
def test_corrupted_weights_fail_naming_the_file(
    tmp_path: Path, version_src: dict[str, Path], strategy: str
) -> None:
    dest = tmp_path / "repo" / "net" / "1"
    stage_model(version_src, dest, MANIFEST)
    flip_byte(dest / "model.safetensors", (dest / "model.safetensors").stat().st_size - 3)
    with pytest.raises(IntegrityError, match=r"model\.safetensors: BLAKE3 checksum mismatch"):
        load(tmp_path / "repo", "net", read_strategy=strategy)


def test_strict_names_and_shapes(tmp_path: Path, version_src: dict[str, Path]) -> None:
    stage_model(
        version_src,
        tmp_path / "repo" / "a" / "1",
        {**MANIFEST, "options": {"module": "model.py:Net", "kwargs": {"hidden": 8}}},
    )
    with pytest.raises(
        ModelDirectoryError, match=r"tensor fc1\.\w+ has shape \(16,.*the module expects \(8"
    ):
        load(tmp_path / "repo", "a")
    _, state = _reference()
    del state["scale"]
    partial = tmp_path / "partial.safetensors"
    save_file(state, str(partial))
    stage_model({**version_src, "model.safetensors": partial}, tmp_path / "repo" / "b" / "1",
                MANIFEST)  # fmt: skip
    with pytest.raises(ModelDirectoryError, match=r"missing \['scale'\]"):
        load(tmp_path / "repo", "b")


def test_pickled_weights_need_the_opt_in(tmp_path: Path) -> None:
    _, state = _reference()
    src = tmp_path / "src"
    src.mkdir()
    torch.save(state, src / "model.pt")
    (src / "model.py").write_text(NET)
    files = {"model.pt": src / "model.pt", "model.py": src / "model.py"}
    manifest = {**MANIFEST, "options": {**MANIFEST["options"], "weights": "model.pt"}}
    # stage refuses what verify and serve would refuse, before copying anything
    with pytest.raises(UnsafeWeightsError, match=r"model\.pt: \.pt files are loaded by unpickling"):
        stage_model(files, tmp_path / "repo" / "pt" / "1", manifest)
    assert not (tmp_path / "repo" / "pt" / "1").exists()
    stage_model(files, tmp_path / "repo" / "ok" / "1", {**manifest, "allow_torch_load": True})
    model = load(tmp_path / "repo", "ok")
    assert model.infer({"x": np.zeros((1, 4), np.float32)})["scores"].shape == (1, 2)


def test_manifest_errors(tmp_path: Path, version_src: dict[str, Path]) -> None:
    cases = [
        ({"module": "model.py"}, "invalid field 'options.module'"),
        ({"module": "model.py:Nope"}, "model.py has no class 'Nope'"),
        ({"module": "no_such_pkg_xyz:Net"}, "cannot import no_such_pkg_xyz"),
        ({"module": "collections:OrderedDict"}, "OrderedDict is no nn.Module"),
        ({"module": "model.py:Net", "weights": "missing.safetensors"}, "missing.safetensors"),
    ]
    for i, (options, message) in enumerate(cases):
        stage_model(
            version_src, tmp_path / "repo" / f"m{i}" / "1", {**MANIFEST, "options": options}
        )
        with pytest.raises((ManifestError, ModelDirectoryError), match=message):
            load(tmp_path / "repo", f"m{i}", allowed_modules=["no_such_pkg_xyz", "collections"])
