"""Checksums of a model version: ``SHA256SUMS`` for interoperability, BLAKE3 for speed.

``SHA256SUMS`` is in ``sha256sum`` format so ``sha256sum -c SHA256SUMS`` works on the volume
and S3 checksums can be compared. ``podserve stage`` also records each file's size and BLAKE3
digest in the manifest: BLAKE3 hashes several times faster than SHA-256, so the load path can
verify weights in the same pass as it reads them without becoming the bottleneck.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import blake3

from podserve.errors import IntegrityError, ManifestError, UnsafeWeightsError
from podserve.storage.manifest import MANIFEST_NAME, Manifest
from podserve.storage.names import check_relative_path

SUMS_NAME = "SHA256SUMS"
SIGNATURE_NAME = "model.sig"  # storage/signature.py: an OpenSSF Model Signing bundle
# Files a version carries that SHA256SUMS does not list: the manifest and the sums (covered
# by the signature when there is one) and the signature itself (it cannot cover itself).
METADATA_FILES = frozenset({MANIFEST_NAME, SUMS_NAME, SIGNATURE_NAME})
CHUNK = 16 * 1024 * 1024

# Formats whose loaders unpickle, i.e. can run code. Refused unless the manifest opts into
# torch.load(weights_only=True) for the torch ones.
PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".joblib", ".ckpt", ".pt", ".pth", ".bin"})
TORCH_LOAD_SUFFIXES = frozenset({".pt", ".pth", ".bin"})

_SUM_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")

Algorithm = Literal["blake3", "sha256"]


def parse_sums(text: str, where: str = SUMS_NAME) -> dict[str, str]:
    """Parse ``sha256sum`` output into {relative path: lowercase hex digest}."""
    sums: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if not line.strip() or line.startswith("#"):
            continue
        match = _SUM_LINE.match(line)
        if not match:
            raise IntegrityError(f"{where}:{lineno}: not a '<sha256>  <file>' line")
        digest, name = match.group(1).lower(), match.group(2)
        name = name.removeprefix("./")
        check_relative_path(name)
        if name in sums:
            raise IntegrityError(f"{where}:{lineno}: {name} listed twice")
        sums[name] = digest
    return sums


def format_sums(sums: dict[str, str]) -> str:
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items()))


def new_hasher(algorithm: Algorithm) -> hashlib._Hash | blake3.blake3:
    if algorithm == "blake3":
        # Several threads for large buffers; blake3 releases the GIL while hashing.
        return blake3.blake3(max_threads=blake3.blake3.AUTO)
    return hashlib.sha256()


def hash_file(path: Path, algorithm: Algorithm) -> str:
    """Digest of a file: BLAKE3 hashes the mapped file on several threads (4x the chunked
    read on a warm page cache: benchmarks/node_cache.py); SHA-256 reads large chunks."""
    hasher = new_hasher(algorithm)
    if algorithm == "blake3" and path.stat().st_size:
        hasher.update_mmap(path)  # type: ignore[union-attr]
        return hasher.hexdigest()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            hasher.update(view[:n])
    return hasher.hexdigest()


def digest_files(directory: Path, names: Iterable[str]) -> dict[str, tuple[int, str, str]]:
    """{name: (size, sha256, blake3)} in one read of each file; used by stage and push."""
    out: dict[str, tuple[int, str, str]] = {}
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    for name in names:
        sha, b3, size = hashlib.sha256(), blake3.blake3(max_threads=blake3.blake3.AUTO), 0
        with open(directory / name, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                sha.update(view[:n])
                b3.update(view[:n])
                size += n
        out[name] = (size, sha.hexdigest(), b3.hexdigest())
    return out


def list_files(version_dir: Path) -> list[str]:
    """Every regular file under a version directory, relative, '/'-separated, sorted.

    Symbolic links are refused outright: a link could point outside the model root.
    """
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(version_dir, onerror=_raise):
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            if full.is_symlink():
                rel = full.relative_to(version_dir).as_posix()
                raise IntegrityError(f"{version_dir}: {rel} is a symbolic link; refusing it")
        for name in filenames:
            found.append(Path(dirpath, name).relative_to(version_dir).as_posix())
    return sorted(found)


def _raise(exc: OSError) -> None:
    if isinstance(exc, PermissionError):
        raise IntegrityError(f"{exc.filename}: not readable (permission denied)") from None
    raise IntegrityError(f"{exc.filename}: {exc.strerror}") from None


@dataclass
class CheckedFile:
    name: str
    size: int
    sha256: str
    blake3: str | None


@dataclass
class Listing:
    """The result of the cheap checks: which files exist, their sizes and expected digests."""

    version_dir: Path
    files: dict[str, CheckedFile] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())


def read_sums(version_dir: Path) -> bytes:
    sums_path = version_dir / SUMS_NAME
    try:
        return sums_path.read_bytes()
    except FileNotFoundError:
        raise IntegrityError(f"{sums_path}: missing; every weight file must be listed") from None
    except PermissionError:
        raise IntegrityError(f"{sums_path}: not readable (permission denied)") from None


def check_listing(
    version_dir: Path, manifest: Manifest, sums_bytes: bytes | None = None
) -> Listing:
    """Everything that can be checked without reading weights; raises the precise reason.

    ``sums_bytes``: SHA256SUMS as already read (and checked against a signature).
    """
    sums_path = version_dir / SUMS_NAME
    raw = read_sums(version_dir) if sums_bytes is None else sums_bytes
    try:
        sums = parse_sums(raw.decode("utf-8"), str(sums_path))
    except UnicodeDecodeError:
        raise IntegrityError(f"{sums_path}: not UTF-8 text") from None
    for name in manifest.files:
        if name not in sums:
            raise ManifestError(
                f"{version_dir / MANIFEST_NAME}: invalid field 'files.{name}': "
                f"not listed in {SUMS_NAME}"
            )
    present = [f for f in list_files(version_dir) if f not in METADATA_FILES]
    for name in present:
        if name not in sums:
            raise IntegrityError(f"{version_dir / name}: not listed in {SUMS_NAME}; refusing it")
    listing = Listing(version_dir)
    for name, sha in sums.items():
        path = version_dir / name
        try:
            st = path.stat()
        except FileNotFoundError:
            raise IntegrityError(f"{path}: listed in {SUMS_NAME} but missing") from None
        if not os.access(path, os.R_OK):
            raise IntegrityError(f"{path}: not readable (permission denied)")
        check_pickle_free(path, manifest)
        entry = manifest.files.get(name)
        if entry is not None and entry.size != st.st_size:
            raise IntegrityError(
                f"{path}: size mismatch: {st.st_size} bytes on disk, {entry.size} expected"
            )
        listing.files[name] = CheckedFile(name, st.st_size, sha, entry.blake3 if entry else None)
    return listing


def check_pickle_free(path: Path, manifest: Manifest) -> None:
    check_pickle_suffix(path, manifest.allow_torch_load)


def check_pickle_suffix(path: Path, allow_torch_load: bool) -> None:
    suffix = path.suffix.lower()
    if suffix not in PICKLE_SUFFIXES:
        return
    if allow_torch_load and suffix in TORCH_LOAD_SUFFIXES:
        return
    raise UnsafeWeightsError(
        f"{path}: {suffix} files are loaded by unpickling, which can run code; convert the "
        "weights to safetensors (or set allow_torch_load: true to load .pt/.pth/.bin with "
        "torch.load(weights_only=True))"
    )


def expected_digest(entry: CheckedFile) -> tuple[Algorithm, str]:
    """The fastest digest recorded for a file."""
    if entry.blake3:
        return "blake3", entry.blake3
    return "sha256", entry.sha256


def check_digest(path: Path, algorithm: Algorithm, expected: str, actual: str) -> None:
    if actual != expected:
        name = "SHA-256" if algorithm == "sha256" else "BLAKE3"
        raise IntegrityError(
            f"{path}: {name} checksum mismatch (got {actual[:16]}…, expected {expected[:16]}…)"
        )


def verify_digests(
    listing: Listing, names: Iterable[str] | None = None, algorithm: Algorithm | None = None
) -> None:
    """Hash files (all, or ``names``) and compare; ``algorithm`` forces one digest."""
    for name in sorted(listing.files) if names is None else names:
        entry = listing.files[name]
        algo, expected = expected_digest(entry)
        if algorithm == "sha256":
            algo, expected = "sha256", entry.sha256
        path = listing.version_dir / name
        check_digest(path, algo, expected, hash_file(path, algo))
