"""safetensors parsing: exact round trips, zero-copy views, partial reads, hostile headers."""

from __future__ import annotations

import json
import mmap
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from podserve.errors import IntegrityError
from podserve.runtime.safetensors_view import (
    load_tensors,
    parse_header,
    read_header,
    write_safetensors,
)
from podserve.storage.reader import read_range


@pytest.fixture
def sample(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "a.f32": torch.randn(3, 5, generator=gen),
        "b.bf16": torch.randn(7, generator=gen).to(torch.bfloat16),
        "c.f16": torch.randn(2, 2, 2, generator=gen).half(),
        "d.i8": torch.randint(-100, 100, (9,), dtype=torch.int8, generator=gen),
        "e.i64": torch.arange(4, dtype=torch.int64),
        "f.bool": torch.tensor([True, False, True]),
        "g.scalar": torch.tensor(3.5),
        "h.empty": torch.empty(0, 4),
    }
    path = tmp_path / "sample.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path, tensors


def test_round_trip_is_exact_and_zero_copy(sample: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, expected = sample
    data = np.fromfile(path, dtype=np.uint8)
    got = load_tensors(data, str(path))
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype
        assert torch.equal(got[name], tensor), name
    # The big tensor lives inside the buffer: writing the buffer changes the tensor.
    start = data.ctypes.data
    assert start <= got["a.f32"].data_ptr() < start + data.nbytes
    before = got["a.f32"].clone()
    data[parse_header(data, "x").tensors["a.f32"].start : data.nbytes] = 0
    assert not torch.equal(got["a.f32"], before)


def test_subset_and_unknown_name(sample: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, _expected = sample
    data = np.fromfile(path, dtype=np.uint8)
    got = load_tensors(data, str(path), names=["e.i64"])
    assert list(got) == ["e.i64"]
    with pytest.raises(IntegrityError, match=r"sample\.safetensors: no tensor named 'nope'"):
        load_tensors(data, str(path), names=["nope"])


def test_partial_read_by_ranges(sample: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, expected = sample
    header = read_header(path)
    assert header.metadata == {"format": "pt"}
    assert header.file_size == path.stat().st_size
    ranges = header.ranges(["c.f16"])
    _offset, length = ranges["c.f16"]
    assert length == 8 * 2
    names = ["b.bf16", "c.f16"]
    start, span = header.span(names)
    buf = read_range(path, start, span)
    got = header.view(buf, names, offset=start)
    for name in names:
        assert torch.equal(got[name], expected[name])
    with pytest.raises(IntegrityError, match="outside the buffer"):
        header.view(buf, ["a.f32"], offset=start)


def test_write_safetensors_streams_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    specs = {"x": (torch.float32, (4, 3)), "y": (torch.int32, (5,)), "z": (torch.bfloat16, (2,))}
    made = {
        "x": torch.arange(12, dtype=torch.float32).reshape(4, 3),
        "y": torch.arange(5, dtype=torch.int32),
        "z": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
    }
    size = write_safetensors(path, specs, made.__getitem__, {"k": "v"})
    assert size == path.stat().st_size
    with safe_open(str(path), "pt") as fh:  # the reference reader agrees
        assert fh.metadata() == {"k": "v"}
        for name, tensor in made.items():
            assert torch.equal(fh.get_tensor(name), tensor)
    assert read_header(path).data_start % 64 == 0


def _file(header: dict[str, object], data: bytes = b"", raw: bytes | None = None) -> bytes:
    blob = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"abc", "shorter than 8 bytes"),
        (struct.pack("<Q", 10**12) + b"{}", "header length 1000000000000 out of range"),
        (_file({}, raw=b"{not json"), "header is not valid JSON"),
        (_file({}, raw=b"[1, 2]"), "header is not a JSON object"),
        (_file({"t": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"\0" * 16),
         "tensor 't': unknown dtype 'F128'"),
        (_file({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
         "tensor 't': invalid shape"),
        (_file({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4),
         r"tensor 't': data_offsets \[0, 8\] outside the data section \(4 bytes\)"),
        (_file({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
         r"tensor 't': 8 bytes for shape \[3\] of F32 \(12 expected\)"),
        (_file({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "u": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8),
         "tensors 't' and 'u' overlap"),
        (_file({"__metadata__": {"a": 1}}), "__metadata__ must map strings to strings"),
    ],
)  # fmt: skip
def test_hostile_headers_are_refused_naming_the_file(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(IntegrityError, match=rf"^{path}: .*{message}"):
        load_tensors(bytearray(content), str(path))
    with pytest.raises(IntegrityError, match=message):
        read_header(path)


def test_unaligned_tensor_is_copied_correctly() -> None:
    values = torch.tensor([1.25, -3.5], dtype=torch.float32)
    header = {
        "pad": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
        "t": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]},
    }
    blob = json.dumps(header).encode()
    blob += b" " * (-(8 + len(blob)) % 8)
    content = bytearray(_file({}, b"\x07" + values.numpy().tobytes(), raw=blob))
    got = load_tensors(content, "unaligned")
    assert torch.equal(got["t"], values)
    assert got["t"].data_ptr() % 4 == 0
    assert int(got["pad"][0]) == 7


def test_read_only_shared_mapping_is_viewed_without_copy_or_warning(
    sample: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    """Every dtype over a PROT_READ/MAP_SHARED mapping: exact, zero-copy, warning-free."""
    path, expected = sample
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    data = np.frombuffer(mm, dtype=np.uint8)
    assert not data.flags.writeable
    got = load_tensors(data, str(path))  # warnings are errors in this suite
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype
        assert torch.equal(got[name], tensor), name
        if tensor.numel():
            assert data.ctypes.data <= got[name].data_ptr() < data.ctypes.data + data.nbytes
    assert torch.equal(load_tensors(path.read_bytes(), str(path))["a.f32"], expected["a.f32"])


def test_writing_a_read_only_mapped_tensor_faults_instead_of_changing_weights(
    sample: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, expected = sample
    code = (
        "import mmap, sys, numpy as np\n"
        "from podserve.runtime.safetensors_view import load_tensors\n"
        "fh = open(sys.argv[1], 'rb')\n"
        "mm = mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)\n"
        "t = load_tensors(np.frombuffer(mm, dtype=np.uint8), 'x')['a.f32']\n"
        "t.add_(1)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(path)], timeout=120, check=False)
    assert result.returncode == -signal.SIGSEGV
    assert torch.equal(load_tensors(path.read_bytes(), str(path))["a.f32"], expected["a.f32"])
