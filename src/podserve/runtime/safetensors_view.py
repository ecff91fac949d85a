"""safetensors without copies: parse the header, view tensors over one buffer.

A safetensors file is an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`` and the
raw tensor bytes (offsets relative to the end of the header). Nothing in it runs code.

The load path reads a whole file once into one :class:`~podserve.storage.reader.WeightBuffer`
(verified in the same pass) and :func:`load_tensors` returns tensors that are views of that
buffer — no per-tensor copies, so a warm, memory-mapped load costs a few ms per GB, and with
the shared read-only mapping every process serving the file uses the same physical pages.

Pipeline stages load only some tensors. They read the header alone, ask for the byte ranges
of their tensors, read those, and view them::

    header = read_header(path)                       # reads only the header
    names = [n for n in header.tensors if n.startswith("encoder.layer.3.")]
    offset, length = header.span(names)              # one contiguous range covering them
    buf = read_range(path, offset, length)           # podserve.storage.reader
    tensors = header.view(buf, names, offset=offset)  # views over buf, no copies

Every validation error is a :class:`~podserve.errors.IntegrityError` that names the file.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.dlpack import from_dlpack

from podserve.errors import IntegrityError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation's limit

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry; ``start``/``end`` are absolute byte offsets in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsHeader:
    """The validated header of one safetensors file."""

    where: str
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    data_start: int = 0
    file_size: int = 0

    def ranges(self, names: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
        """{name: (absolute offset, length)} for ``names`` (default: every tensor)."""
        return {i.name: (i.start, i.length) for i in self._select(names)}

    def span(self, names: Iterable[str] | None = None) -> tuple[int, int]:
        """(offset, length) of the smallest contiguous range holding all of ``names``."""
        infos = self._select(names)
        if not infos:
            return self.data_start, 0
        start = min(i.start for i in infos)
        return start, max(i.end for i in infos) - start

    def view(
        self, buffer: Any, names: Iterable[str] | None = None, *, offset: int = 0
    ) -> dict[str, torch.Tensor]:
        """Tensors viewing ``buffer``, which holds the file's bytes from ``offset`` on.

        ``buffer`` is a numpy uint8 array, a bytearray or a mapping, writable or read-only
        (the shared read-only mapping of :mod:`podserve.storage.reader`); the tensors share
        its memory and keep it alive. A tensor whose offset is not aligned to its element size
        is copied (rare: writers align them), so arithmetic never sees an unaligned pointer.
        """
        mv = memoryview(buffer)
        size = mv.nbytes
        out: dict[str, torch.Tensor] = {}
        for info in self._select(names):
            begin = info.start - offset
            if begin < 0 or info.end - offset > size:
                raise IntegrityError(
                    f"{self.where}: tensor {info.name!r} [{info.start}, {info.end}) is outside "
                    f"the buffer given [{offset}, {offset + size})"
                )
            out[info.name] = _tensor(buffer, info, begin, mv.readonly)
        return out

    def _select(self, names: Iterable[str] | None) -> list[TensorInfo]:
        if names is None:
            return list(self.tensors.values())
        try:
            return [self.tensors[n] for n in names]
        except KeyError as exc:
            raise IntegrityError(f"{self.where}: no tensor named {exc.args[0]!r}") from None


def _tensor(buffer: Any, info: TensorInfo, begin: int, readonly: bool) -> torch.Tensor:
    dtype = DTYPES[info.dtype]
    count = math.prod(info.shape)
    if count == 0:
        return torch.empty(info.shape, dtype=dtype)
    itemsize = dtype.itemsize
    if itemsize > 1 and _address(buffer, begin) % itemsize:
        raw = bytearray(memoryview(buffer)[begin : begin + info.length])
        return torch.frombuffer(raw, dtype=dtype, count=count).reshape(info.shape)
    if readonly:
        # torch.frombuffer / from_numpy warn on read-only memory (torch has no read-only
        # tensors). DLPack carries the read-only flag and torch imports it without a copy or
        # a warning; a write into the PROT_READ pages would fault, never change the weights.
        carrier = np.frombuffer(buffer, dtype=_UNSIGNED[itemsize], count=count, offset=begin)
        tensor = from_dlpack(carrier)
        return (tensor if tensor.dtype == dtype else tensor.view(dtype)).reshape(info.shape)
    return torch.frombuffer(buffer, dtype=dtype, count=count, offset=begin).reshape(info.shape)


# Same-size integer types to carry any dtype (numpy has no bfloat16 / float8) over DLPack.
_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _address(buffer: Any, begin: int) -> int:
    if isinstance(buffer, np.ndarray):
        return int(buffer.ctypes.data) + begin
    return int(np.frombuffer(buffer, dtype=np.uint8, count=0).ctypes.data) + begin


def parse_header(prefix: Any, where: str, file_size: int | None = None) -> SafetensorsHeader:
    """Validate the header found at the start of ``prefix`` (the file's first bytes or all).

    ``file_size`` defaults to ``len(prefix)``; pass it when ``prefix`` holds only the header.
    """
    mv = memoryview(prefix).cast("B")
    total = mv.nbytes if file_size is None else file_size
    if mv.nbytes < 8:
        raise IntegrityError(f"{where}: not a safetensors file (shorter than 8 bytes)")
    (n,) = struct.unpack_from("<Q", mv, 0)
    if n > MAX_HEADER_BYTES or 8 + n > total:
        raise IntegrityError(f"{where}: not a safetensors file (header length {n} out of range)")
    if 8 + n > mv.nbytes:
        raise IntegrityError(f"{where}: header truncated ({mv.nbytes} of {8 + n} bytes given)")
    try:
        raw = json.loads(bytes(mv[8 : 8 + n]))
    except (UnicodeDecodeError, ValueError):
        raise IntegrityError(f"{where}: safetensors header is not valid JSON") from None
    if not isinstance(raw, dict):
        raise IntegrityError(f"{where}: safetensors header is not a JSON object")
    data_start = 8 + n
    data_len = total - data_start
    metadata = raw.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise IntegrityError(f"{where}: __metadata__ must map strings to strings")
    tensors: dict[str, TensorInfo] = {}
    for name, entry in raw.items():
        tensors[name] = _entry(where, name, entry, data_start, data_len)
    _check_no_overlap(where, tensors.values())
    return SafetensorsHeader(where, tensors, metadata, data_start, total)


def _entry(where: str, name: str, entry: Any, data_start: int, data_len: int) -> TensorInfo:
    def bad(why: str) -> IntegrityError:
        return IntegrityError(f"{where}: tensor {name!r}: {why}")

    if not isinstance(entry, dict):
        raise bad("entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPES:
        raise bad(f"unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise bad(f"invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise bad(f"invalid data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise bad(f"data_offsets [{begin}, {end}] outside the data section ({data_len} bytes)")
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if end - begin != expected:
        raise bad(f"{end - begin} bytes for shape {shape} of {dtype} ({expected} expected)")
    return TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end)


def _check_no_overlap(where: str, infos: Iterable[TensorInfo]) -> None:
    last: TensorInfo | None = None
    for info in sorted((i for i in infos if i.length), key=lambda i: i.start):
        if last is not None and info.start < last.end:
            raise IntegrityError(f"{where}: tensors {last.name!r} and {info.name!r} overlap")
        last = info


def read_header(path: Path) -> SafetensorsHeader:
    """Parse a file's header reading only the header bytes (for partial loads)."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(0)
            head = fh.read(8)
            if len(head) == 8:
                (n,) = struct.unpack("<Q", head)
                if 8 + n <= min(size, 8 + MAX_HEADER_BYTES):
                    head += fh.read(n)
    except OSError as exc:
        raise IntegrityError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_header(head, str(path), file_size=size)


def load_tensors(
    buffer: Any, where: str, names: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """Every tensor (or ``names``) of a whole safetensors file held in ``buffer``, as views."""
    return parse_header(buffer, where).view(buffer, names)


def write_safetensors(
    path: Path,
    specs: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
    fill: Callable[[str], torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Stream a safetensors file tensor by tensor (memory stays at one tensor); returns size.

    ``specs`` gives each tensor's dtype and shape up front (the header comes first);
    ``fill(name)`` produces the tensor when its turn comes.
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    pos = 0
    for name, (dtype, shape) in specs.items():
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape),
                        "data_offsets": [pos, pos + nbytes]}  # fmt: skip
        pos += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-(8 + len(blob)) % 64)  # align the data section
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)) + blob)
        for name, (dtype, shape) in specs.items():
            tensor = fill(name).detach().to("cpu", dtype).contiguous()
            if tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"{name}: fill returned shape {tuple(tensor.shape)}, not {shape}")
            fh.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return 8 + len(blob) + pos
