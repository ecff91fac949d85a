"""Resolving, listing and verifying models, with the exact reason for each failure."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from podserve.errors import (
    IntegrityError,
    InvalidNameError,
    ManifestError,
    ModelNotFoundError,
    RootNotFoundError,
    RootNotReadableError,
    UnsafeWeightsError,
)
from podserve.storage.repository import ModelRepository, parse_model_ref
from podserve.storage.staging import stage_model
from tests.storage.conftest import IDENT_MANIFEST
from tests.storage.privileges import as_nobody


def test_resolves_newest_and_pinned(staged: Path, tmp_path: Path) -> None:
    src = tmp_path / "w.safetensors"
    src.write_bytes(b"x" * 10)
    for v in ("2", "10"):
        stage_model({"w.safetensors": src}, staged / "ident" / v, IDENT_MANIFEST)
    (staged / "ident" / ".tmp-11-abc").mkdir()  # an in-progress pull is invisible
    repo = ModelRepository(staged)
    assert repo.versions("ident") == ["1", "2", "10"]
    assert repo.resolve("ident")[0] == "10"
    assert repo.resolve("ident", "2")[0] == "2"
    assert repo.models() == ["ident"]
    with pytest.raises(ModelNotFoundError, match="model 'ident' has no version 3"):
        repo.resolve("ident", "3")
    with pytest.raises(ModelNotFoundError, match="model 'nope' not found"):
        repo.resolve("nope")


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", ".hidden", "x" * 200, "a\x00b"])
def test_model_names_cannot_escape(staged: Path, bad: str) -> None:
    with pytest.raises(InvalidNameError, match="invalid model name"):
        ModelRepository(staged).resolve(bad)


@pytest.mark.parametrize("bad", ["0", "-1", "1.0", "../1", "latest"])
def test_versions_are_integers(staged: Path, bad: str) -> None:
    with pytest.raises(InvalidNameError, match="invalid model version"):
        ModelRepository(staged).resolve("ident", bad)
    with pytest.raises(InvalidNameError):
        parse_model_ref(f"ident:{bad}")


def test_root_missing(tmp_path: Path) -> None:
    with pytest.raises(RootNotFoundError, match=r"does not exist \(volume not mounted\?\)"):
        ModelRepository(tmp_path / "absent").models()


def test_root_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(RootNotFoundError, match="is not a directory"):
        ModelRepository(tmp_path / "file").models()


def test_root_not_readable(staged_open: Path) -> None:
    staged = staged_open
    staged.chmod(0o700)

    def list_models() -> str:
        try:
            ModelRepository(staged).models()
        except RootNotReadableError as exc:
            return str(exc)
        return "no error"

    assert as_nobody(list_models) == f"model root {staged} is not readable (permission denied)"


def test_weight_not_readable(staged_open: Path) -> None:
    staged = staged_open
    (staged / "ident" / "1" / "weights.safetensors").chmod(0o600)

    def open_model() -> str:
        try:
            ModelRepository(staged).open("ident")
        except IntegrityError as exc:
            return str(exc)
        return "no error"

    path = staged / "ident" / "1" / "weights.safetensors"
    assert as_nobody(open_model) == f"{path}: not readable (permission denied)"


def test_manifest_missing(staged: Path) -> None:
    (staged / "ident" / "1" / "podserve.yaml").unlink()
    with pytest.raises(ManifestError, match=r"podserve\.yaml: manifest missing$"):
        ModelRepository(staged).open("ident")


def test_manifest_not_yaml(staged: Path) -> None:
    (staged / "ident" / "1" / "podserve.yaml").write_text("runtime: [unclosed\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        ModelRepository(staged).open("ident")


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda t: t.replace("runtime: python", "runtime: tensorflow"), "runtime"),
        (lambda t: t.replace("datatype: FP32", "datatype: FLOAT", 1), "inputs.0.datatype"),
        (lambda t: t.replace("max_batch_size: 8", "max_batch_size: -2"), "max_batch_size"),
        (lambda t: t + "colour: blue\n", "colour"),
        (lambda t: t.replace("runtime: python\n", ""), "runtime"),
    ],
)
def test_manifest_invalid_field_is_named(staged: Path, edit: object, field: str) -> None:
    path = staged / "ident" / "1" / "podserve.yaml"
    path.write_text(edit(path.read_text()))  # type: ignore[operator]
    with pytest.raises(ManifestError, match=rf"invalid field '{re.escape(field)}'"):
        ModelRepository(staged).open("ident")


def test_listed_file_missing(staged: Path) -> None:
    path = staged / "ident" / "1" / "sub" / "config.json"
    path.unlink()
    with pytest.raises(
        IntegrityError, match=rf"^{re.escape(str(path))}: listed in SHA256SUMS but missing$"
    ):
        ModelRepository(staged).open("ident")


def test_size_mismatch_names_the_file(staged: Path) -> None:
    path = staged / "ident" / "1" / "weights.safetensors"
    with open(path, "ab") as fh:
        fh.write(b"!")
    with pytest.raises(
        IntegrityError,
        match=rf"^{re.escape(str(path))}: size mismatch: 16385 bytes on disk, 16384 expected$",
    ):
        ModelRepository(staged).open("ident")


@pytest.mark.parametrize("algorithm", [None, "sha256"])
def test_checksum_mismatch_names_the_file(staged: Path, algorithm: str | None) -> None:
    path = staged / "ident" / "1" / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF  # same size, one bit pattern changed
    path.write_bytes(bytes(data))
    repo = ModelRepository(staged)
    repo.open("ident")  # cheap checks pass: same size
    name = "SHA-256" if algorithm else "BLAKE3"
    with pytest.raises(IntegrityError, match=rf"^{re.escape(str(path))}: {name} checksum mismatch"):
        repo.verify("ident", algorithm=algorithm)  # type: ignore[arg-type]


def test_unlisted_file_is_refused(staged: Path) -> None:
    extra = staged / "ident" / "1" / "extra.safetensors"
    extra.write_bytes(b"sneaky")
    with pytest.raises(
        IntegrityError, match=rf"^{re.escape(str(extra))}: not listed in SHA256SUMS; refusing it$"
    ):
        ModelRepository(staged).open("ident")


def test_sums_missing(staged: Path) -> None:
    (staged / "ident" / "1" / "SHA256SUMS").unlink()
    with pytest.raises(
        IntegrityError, match="SHA256SUMS: missing; every weight file must be listed"
    ):
        ModelRepository(staged).open("ident")


def test_sums_malformed(staged: Path) -> None:
    (staged / "ident" / "1" / "SHA256SUMS").write_text("not a checksum line\n")
    with pytest.raises(IntegrityError, match=r"SHA256SUMS:1: not a '<sha256>  <file>' line"):
        ModelRepository(staged).open("ident")


def test_sums_cannot_point_outside(staged: Path) -> None:
    (staged / "ident" / "1" / "SHA256SUMS").write_text("0" * 64 + "  ../../secret\n")
    with pytest.raises(InvalidNameError, match="must be relative and stay inside"):
        ModelRepository(staged).open("ident")


def test_symlink_is_refused(staged: Path, tmp_path: Path) -> None:
    (tmp_path / "outside").write_text("secret")
    os.symlink(tmp_path / "outside", staged / "ident" / "1" / "link.json")
    with pytest.raises(IntegrityError, match=r"link\.json is a symbolic link; refusing it"):
        ModelRepository(staged).open("ident")


def _hand_made(dest: Path, files: dict[str, bytes], manifest: dict[str, object]) -> None:
    """A version written without ``podserve stage`` (which would refuse pickles up front)."""
    dest.mkdir(parents=True)
    for name, data in files.items():
        (dest / name).write_bytes(data)
    (dest / "SHA256SUMS").write_text(
        "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in files.items())
    )
    (dest / "podserve.yaml").write_text(yaml.safe_dump(manifest))


@pytest.mark.parametrize("suffix", [".pkl", ".pt", ".bin", ".ckpt"])
def test_pickle_weights_are_refused(tmp_path: Path, suffix: str) -> None:
    src = tmp_path / f"model{suffix}"
    src.write_bytes(b"\x80\x04K\x01.")  # a pickle
    message = rf"model\{suffix}: {suffix} files are loaded by unpickling"
    with pytest.raises(UnsafeWeightsError, match=message):  # stage refuses it too
        stage_model({src.name: src}, tmp_path / "root" / "m" / "1", IDENT_MANIFEST)
    _hand_made(tmp_path / "root" / "m" / "1", {src.name: src.read_bytes()}, IDENT_MANIFEST)
    with pytest.raises(UnsafeWeightsError, match=message):
        ModelRepository(tmp_path / "root").open("m")


def test_torch_load_opt_in_allows_pt_only(tmp_path: Path) -> None:
    src = tmp_path / "model.pt"
    src.write_bytes(b"zip")
    stage_model(
        {src.name: src}, tmp_path / "root" / "m" / "1", {**IDENT_MANIFEST, "allow_torch_load": True}
    )
    assert "model.pt" in ModelRepository(tmp_path / "root").open("m").listing.files
    opted_in = {**IDENT_MANIFEST, "allow_torch_load": True}
    with pytest.raises(UnsafeWeightsError):
        stage_model({"model.pkl": src}, tmp_path / "root" / "p" / "1", opted_in)
    _hand_made(tmp_path / "root" / "p" / "1", {"model.pkl": b"x"}, opted_in)
    with pytest.raises(UnsafeWeightsError):
        ModelRepository(tmp_path / "root").open("p")


def _elsewhere(tmp_path: Path, staged: Path) -> Path:
    """A copy of ident/1 outside the model root."""
    outside = tmp_path / "elsewhere" / "ident"
    shutil.copytree(staged / "ident", outside)
    return outside


@pytest.mark.parametrize("where", ["inside", "outside"])
def test_a_linked_model_directory_is_refused(staged: Path, tmp_path: Path, where: str) -> None:
    target = staged / "ident" if where == "inside" else _elsewhere(tmp_path, staged)
    os.symlink(target, staged / "alias")
    assert "alias" in ModelRepository(staged).models()  # listed, so serve reports it
    message = rf"^{staged / 'alias'}: the model directory is a symbolic link \(to {target}\)"
    with pytest.raises(IntegrityError, match=message):
        ModelRepository(staged).open("alias")
    with pytest.raises(IntegrityError, match=message):
        ModelRepository(staged).verify("alias", "1")


@pytest.mark.parametrize("where", ["inside", "outside"])
def test_a_linked_version_directory_is_refused(staged: Path, tmp_path: Path, where: str) -> None:
    target = Path("1") if where == "inside" else _elsewhere(tmp_path, staged) / "1"
    os.symlink(target, staged / "ident" / "5")
    message = (
        rf"^{staged / 'ident' / '5'}: the version directory is a symbolic link \(to {target}\)"
    )
    with pytest.raises(IntegrityError, match=message):
        ModelRepository(staged).open("ident")  # 5 is the newest
    with pytest.raises(IntegrityError, match=message):
        ModelRepository(staged).open("ident", "5")
    assert ModelRepository(staged).open("ident", "1").version == "1"
