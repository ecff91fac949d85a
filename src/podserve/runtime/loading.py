"""How every runtime reads a model version: verified, once, nothing left unchecked.

:class:`VersionReader` is the one path from the volume into a runtime:

* weight files go through :func:`podserve.storage.reader.read_weights`, which checks the
  digest recorded by ``podserve stage`` in the same pass as it reads (no second pass);
* small files a runtime consumes (``config.json``, ``tokenizer.json``, user ``model.py``)
  are read into memory once, hashed, and parsed from those very bytes — what is checked is
  what is used;
* :meth:`VersionReader.finish` hashes every other listed file, so a version is never
  ready with an unchecked file in it.

Digests are skipped (sizes only, which :func:`check_listing` already did) only when the
settings or the manifest say ``verify: size``; the report then says ``size``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from podserve.errors import IntegrityError
from podserve.storage.integrity import (
    CheckedFile,
    check_digest,
    expected_digest,
    new_hasher,
    verify_digests,
)
from podserve.storage.reader import WeightBuffer, read_weights

if TYPE_CHECKING:
    from podserve.runtime.model import LoadReport
    from podserve.settings import Settings
    from podserve.storage.repository import ModelVersion


class VersionReader:
    """Reads files of one verified-listing version and fills the runtime's LoadReport."""

    def __init__(self, version: ModelVersion, settings: Settings, report: LoadReport) -> None:
        self.version = version
        self.settings = settings
        self.report = report
        # A signed version is always checked in full: its signature is only as good as the
        # digests compared with it.
        self.full = version.signer is not None or (
            settings.verify == "full" and version.manifest.verify == "full"
        )
        self.consumed: set[str] = set()
        self._started = time.perf_counter()
        self._weight_check: str | None = None
        self._shared = True  # every weight buffer so far maps the page cache

    @property
    def names(self) -> list[str]:
        """Every file of the version (relative paths), sorted."""
        return sorted(self.version.listing.files)

    def has(self, name: str) -> bool:
        return name in self.version.listing.files

    def _entry(self, name: str) -> CheckedFile:
        entry = self.version.listing.files.get(name)
        if entry is None:
            path = self.version.path / name
            raise IntegrityError(f"{path}: needed by the runtime but not listed in SHA256SUMS")
        return entry

    def small(self, name: str) -> bytes:
        """A small file's bytes, checked (digest or size) before they are returned."""
        entry = self._entry(name)
        path = self.version.path / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise IntegrityError(f"{path}: cannot read: {exc.strerror}") from None
        if len(data) != entry.size:
            raise IntegrityError(
                f"{path}: size mismatch: {len(data)} bytes on disk, {entry.size} expected"
            )
        if self.full:
            algorithm, expected = expected_digest(entry)
            hasher = new_hasher(algorithm)
            hasher.update(data)
            check_digest(path, algorithm, expected, hasher.hexdigest())
        self.consumed.add(name)
        self.report.bytes_read += len(data)
        return data

    def weights(self, name: str, *, writable: bool = False) -> WeightBuffer:
        """A weight file as one buffer, verified in the read pass (settings.read_strategy).

        With the ``mmap`` strategy the buffer maps the page cache read-only (shared by every
        process serving the file); ``writable`` maps it copy-on-write instead.
        """
        entry = self._entry(name)
        buffer = read_weights(
            self.version.path / name,
            entry,
            strategy=self.settings.read_strategy,
            verify=self.full,
            writable=writable,
        )
        self.consumed.add(name)
        self.report.bytes_read += entry.size
        self._weight_check = buffer.verified
        self._shared = self._shared and buffer.shared
        return buffer

    def private(self, why: str) -> None:
        """The runtime copies the weights (dtype, device, its own arena): say so, and why."""
        self.report.weights = "private"
        self.report.details.setdefault("weights_private_because", why)

    def finish(self, device: str) -> None:
        """Check every file not consumed yet, then complete the report."""
        rest = [n for n in self.names if n not in self.consumed]
        if self.full:
            verify_digests(self.version.listing, rest)
            self.report.bytes_read += sum(self.version.listing.files[n].size for n in rest)
        self.consumed.update(rest)
        if self._weight_check is not None:
            self.report.verified = self._weight_check
        elif self.full:
            entries = [self.version.listing.files[n] for n in self.names]
            self.report.verified = expected_digest(entries[0])[0] if entries else "none"
        else:
            self.report.verified = "size"
        self.report.device = device
        if self.report.weights == "none" and self._weight_check is not None:
            self.report.weights = "shared" if self._shared else "private"
            if not self._shared:
                self.report.details.setdefault(
                    "weights_private_because", "read_strategy read (a buffer per process)"
                )
        self.report.seconds = time.perf_counter() - self._started
        self.report.details.setdefault("read_strategy", self.settings.read_strategy)
