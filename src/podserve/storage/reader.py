"""Reading weight files off the volume, verified in the same pass.

Two strategies, chosen by ``PODSERVE_READ_STRATEGY``:

* ``mmap``: the file is memory-mapped read-only and shared (``MAP_SHARED``, ``PROT_READ``):
  the tensors *are* the page cache's pages, so every process serving the same file (the
  replicas on a node, which the node cache gives the same inodes) holds the weights once, and
  nothing in the process can change the bytes that were verified (a write faults). Warm page
  cache: a few ms per GB. Verification hashes the mapping itself with BLAKE3 on several
  threads, which also faults the pages in: what is checked is what is used.
  ``writable=True`` maps copy-on-write instead (``MAP_PRIVATE``), for runtimes running user
  code that may write to its buffers: pages stay shared until written.
* ``read``: one buffer of the file's size is allocated once and filled with large positional
  reads, a few in flight (in file order); each chunk is hashed as soon as it is in, so the
  digest costs (almost) nothing beyond the read. Better on network filesystems where mmap
  page faults are slow; each process holds its own copy (``shared`` is False).

Either way the caller gets one contiguous buffer per file; it is read-only when shared.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from podserve.errors import IntegrityError
from podserve.storage.integrity import CheckedFile, check_digest, expected_digest, new_hasher

ReadStrategy = Literal["mmap", "read"]
CHUNK = 32 * 1024 * 1024
READERS = 4  # reads in flight for the "read" strategy (measured: benchmarks/cold_start.py)


@dataclass
class WeightBuffer:
    """A file's bytes as a uint8 array; ``close`` releases the mapping.

    ``shared``: the array maps the page cache (other processes mapping the file share it);
    it is read-only unless the file was mapped copy-on-write.
    """

    path: Path
    data: np.ndarray
    verified: str  # "blake3", "sha256" or "size"
    _mmap: mmap.mmap | None = None
    shared: bool = False

    def close(self) -> None:
        self.data = np.empty(0, dtype=np.uint8)
        if self._mmap is not None:
            # Views still alive (tensors in use) keep the mapping; the GC unmaps it later.
            with contextlib.suppress(BufferError):
                self._mmap.close()
            self._mmap = None


def read_weights(
    path: Path,
    entry: CheckedFile,
    *,
    strategy: ReadStrategy = "mmap",
    verify: bool = True,
    writable: bool = False,
) -> WeightBuffer:
    """Read one listed file and check its size and (when ``verify``) its digest."""
    size = path.stat().st_size
    if size != entry.size:
        raise IntegrityError(f"{path}: size mismatch: {size} bytes on disk, {entry.size} expected")
    if strategy == "mmap":
        return _read_mmap(path, entry, verify, writable)
    return _read_sequential(path, entry, verify)


def _read_mmap(path: Path, entry: CheckedFile, verify: bool, writable: bool) -> WeightBuffer:
    with open(path, "rb") as fh:
        if entry.size == 0:
            return WeightBuffer(path, np.empty(0, np.uint8), "size")
        if writable:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        else:
            mm = mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    data = np.frombuffer(mm, dtype=np.uint8)
    verified = "size"
    if verify:
        algorithm, expected = expected_digest(entry)
        mm.madvise(mmap.MADV_SEQUENTIAL)
        hasher = new_hasher(algorithm)
        hasher.update(data)  # type: ignore[arg-type]  # numpy arrays are buffers
        check_digest(path, algorithm, expected, hasher.hexdigest())
        verified = algorithm
    return WeightBuffer(path, data, verified, mm, shared=True)


def _read_sequential(path: Path, entry: CheckedFile, verify: bool) -> WeightBuffer:
    data = np.empty(entry.size, dtype=np.uint8)
    algorithm, expected = expected_digest(entry)
    hasher = new_hasher(algorithm) if verify else None
    view = data.data  # the array's own memoryview
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(AttributeError, OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        # READERS positional reads in flight, in file order; this thread hashes each chunk as
        # soon as it is in (preadv and BLAKE3 both release the GIL). One stream of readinto
        # calls leaves most of a virtual or network disk's bandwidth unused.
        offsets = range(0, entry.size, CHUNK)
        with ThreadPoolExecutor(READERS, thread_name_prefix="podserve-read") as pool:
            futures = [pool.submit(_pread_chunk, fd, view, off, path) for off in offsets]
            try:
                for off, future in zip(offsets, futures, strict=True):
                    future.result()
                    if hasher is not None:
                        hasher.update(view[off : off + CHUNK])
            except BaseException:
                for pending in futures:
                    pending.cancel()
                raise
    finally:
        os.close(fd)
    if hasher is None:
        return WeightBuffer(path, data, "size")
    check_digest(path, algorithm, expected, hasher.hexdigest())
    return WeightBuffer(path, data, algorithm)


def _pread_chunk(fd: int, view: memoryview, offset: int, path: Path) -> None:
    end = min(offset + CHUNK, len(view))
    pos = offset
    while pos < end:
        n = os.preadv(fd, [view[pos:end]], pos)
        if not n:
            raise IntegrityError(f"{path}: file shrank while reading")
        pos += n


def read_range(path: Path, offset: int, length: int, out: np.ndarray | None = None) -> np.ndarray:
    """Read one byte range (e.g. a single tensor) with positional reads; counts as I/O."""
    buf = np.empty(length, dtype=np.uint8) if out is None else out
    view = memoryview(buf)  # type: ignore[arg-type]  # numpy arrays are buffers
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = 0
        while pos < length:
            n = os.preadv(fd, [view[pos : pos + CHUNK]], offset + pos)
            if not n:
                raise IntegrityError(f"{path}: unexpected end of file at {offset + pos}")
            pos += n
    finally:
        os.close(fd)
    return buf
