"""The one interface every pull/push backend implements, and how a URI picks its backend.

A source only has to answer four questions: how big is a file, what are the bytes of a small
file, stream a byte range of a large one, and (for push) store a local file. Everything else
(parallel parts, verification, journal, atomic publish) lives in ``pull.py`` once, so a new
backend is one small module, not a method on a big class.

Backends translate their own exceptions at this border into :class:`TransferError`
(transient: retried with backoff) or :class:`PermanentTransferError` (404, access denied,
wrong region: reported at once).
"""

from __future__ import annotations

import importlib
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from podserve.errors import ConfigurationError, PermanentTransferError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


@dataclass(frozen=True)
class SourceOptions:
    """Connection settings shared by the backends (each uses what applies to it)."""

    endpoint_url: str | None = None
    region: str | None = None
    credentials_dir: Path | None = None
    anonymous: bool = False
    timeout_s: float = 60.0


class Source(ABC):
    """A model version (a directory or an archive) at a URI, read by byte ranges."""

    #: True when ranged reads work; otherwise each file is fetched in one stream.
    ranged: bool = True

    def __init__(self, uri: str, options: SourceOptions) -> None:
        self.uri = uri
        self.options = options

    def describe(self) -> str:
        """The URI for logs and errors, with any credentials or signatures removed."""
        return redact(self.uri)

    def is_archive(self) -> bool:
        return self.uri.split("?", 1)[0].lower().endswith(ARCHIVE_SUFFIXES)

    @abstractmethod
    async def sizes(self, names: Iterable[str]) -> dict[str, int]:
        """Size in bytes of each named file (relative to the URI; '' = the URI itself)."""

    @abstractmethod
    async def read_bytes(self, name: str) -> bytes:
        """The whole content of a small file (manifest, checksums)."""

    @abstractmethod
    def stream(self, name: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of a file, as chunks of bounded size."""

    async def put_file(self, local: Path, name: str) -> None:
        """Store a local file under the URI (push)."""
        raise ConfigurationError(f"{self.describe()}: this kind of location is read-only")

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def join(self, name: str) -> str:
        base = self.uri.split("?", 1)[0]
        if not name:
            return base
        return base.rstrip("/") + "/" + name


_BACKENDS = {
    "s3": "podserve.storage.sources.s3:S3Source",
    "gs": "podserve.storage.sources.gcs:GcsSource",
    "gcs": "podserve.storage.sources.gcs:GcsSource",
    "http": "podserve.storage.sources.http:HttpSource",
    "https": "podserve.storage.sources.http:HttpSource",
    "file": "podserve.storage.sources.local:LocalSource",
    "": "podserve.storage.sources.local:LocalSource",
}

REMOTE_SCHEMES = tuple(sorted(k for k in _BACKENDS if k not in ("file", "")))
"""URI schemes an init container can pull from (a pod has no local path to copy)."""


def open_source(uri: str, options: SourceOptions | None = None) -> Source:
    """The backend for a URI: ``s3://``, ``gs://``, ``http(s)://``, ``file://`` or a path."""
    scheme = urlsplit(uri).scheme.lower() if "://" in uri else ""
    target = _BACKENDS.get(scheme)
    if target is None:
        raise ConfigurationError(
            f"unsupported source {redact(uri)!r}: use s3://, gs://, https://, file:// or a path"
        )
    module, _, cls = target.partition(":")
    backend: type[Source] = getattr(importlib.import_module(module), cls)
    return backend(uri, options or SourceOptions())


_SECRET_QUERY = re.compile(r"(?i)(signature|credential|token|key|sig|secret|password)")


def redact(uri: str) -> str:
    """Drop user:password and secret-looking query parameters (presigned URLs) from a URI."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    netloc = parts.netloc.rpartition("@")[2]
    query = parts.query
    if query:
        kept = [
            p if not _SECRET_QUERY.search(p.partition("=")[0]) else p.partition("=")[0] + "=***"
            for p in query.split("&")
        ]
        query = "&".join(kept)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class SourceNotFoundError(PermanentTransferError):
    """404: the object or bucket does not exist (push uses it to tell "absent" from "denied")."""


def not_found(where: str) -> PermanentTransferError:
    return SourceNotFoundError(f"{where}: not found (404); check the bucket, prefix and name")


def access_denied(where: str, hint: str = "") -> PermanentTransferError:
    return PermanentTransferError(f"{where}: access denied (403){hint}")
