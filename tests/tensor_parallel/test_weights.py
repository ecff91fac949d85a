"""A rank reads only its slices and checks them (podserve.tensor_parallel.weights)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from podserve.errors import IntegrityError
from podserve.runtime.safetensors_view import load_tensors, read_header
from podserve.storage.repository import ModelRepository
from podserve.tensor_parallel.split import split_tensor_parallel
from podserve.tensor_parallel.weights import read_rank_weights


def test_each_rank_holds_its_slices_of_the_real_tensors(tp_root: Path) -> None:
    plan = split_tensor_parallel(tp_root, "decoder", None, 2)
    version = ModelRepository(tp_root).open("decoder")
    path = version.path / "model.safetensors"
    full = load_tensors(bytearray(path.read_bytes()), str(path))
    header = plan.files["model.safetensors"].header_length
    for rank in (0, 1):
        weights = read_rank_weights(version, plan, rank, verify=True)
        assert weights.bytes_read == header + plan.ranks[rank].bytes
        assert weights.verified == "blake3"
        t = weights.tensors
        half = slice(64 * rank, 64 * (rank + 1))
        torch.testing.assert_close(t["h.0.mlp.c_proj.weight"], full["h.0.mlp.c_proj.weight"][
            256 * rank : 256 * (rank + 1)])  # fmt: skip
        torch.testing.assert_close(t["h.1.mlp.c_fc.weight"], full["h.1.mlp.c_fc.weight"][
            :, 256 * rank : 256 * (rank + 1)])  # fmt: skip
        qkv = full["h.2.attn.c_attn.weight"]
        expected = torch.cat([qkv[:, half], qkv[:, 128:][:, half], qkv[:, 256:][:, half]], dim=1)
        torch.testing.assert_close(t["h.2.attn.c_attn.weight"], expected)
        torch.testing.assert_close(t["wte.weight"], full["wte.weight"])


def test_a_flipped_byte_in_rank_1s_slice_is_refused_by_rank_1_only(
    tp_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    shutil.copytree(tp_root / "decoder", root / "decoder")
    plan = split_tensor_parallel(root, "decoder", None, 2)
    path = root / "decoder" / "1" / "model.safetensors"
    info = read_header(path).tensors["h.1.mlp.c_fc.weight"]  # [128, 512]: rank 1 has cols 256+
    data = bytearray(path.read_bytes())
    data[info.start + 300 * 4] ^= 0x01  # row 0, column 300: rank 1's block
    path.write_bytes(data)
    version = ModelRepository(root).open("decoder")
    read_rank_weights(version, plan, 0, verify=True)  # rank 0 never reads that byte
    with pytest.raises(
        IntegrityError, match=r"model\.safetensors: tensor 'h\.1\.mlp\.c_fc\.weight'"
    ):
        read_rank_weights(version, plan, 1, verify=True)


def test_a_manifest_for_another_file_is_refused(tp_root: Path) -> None:
    plan = split_tensor_parallel(tp_root, "decoder", None, 2)
    version = ModelRepository(tp_root).open("minilm")
    with pytest.raises(IntegrityError, match="not the file the tensor-parallel manifest"):
        read_rank_weights(version, plan, 0, verify=True)
