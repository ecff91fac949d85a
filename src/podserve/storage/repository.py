"""The model repository on a volume: ``<root>/<model>/<version>/``.

Read-only by design: nothing here writes under the root, so the volume can be mounted
ReadOnlyMany and the container's root filesystem read-only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from podserve.errors import (
    IntegrityError,
    ModelNotFoundError,
    RootNotFoundError,
    RootNotReadableError,
)
from podserve.storage.integrity import (
    SUMS_NAME,
    Algorithm,
    Listing,
    check_listing,
    read_sums,
    verify_digests,
)
from podserve.storage.manifest import MANIFEST_NAME, Manifest, load_manifest, read_manifest_bytes
from podserve.storage.names import check_model_name, check_version
from podserve.storage.names import parse_model_ref as parse_model_ref  # re-exported
from podserve.storage.signature import (
    Signer,
    TrustPolicy,
    bind_listing,
    check_signature,
    check_signed_bytes,
)

if TYPE_CHECKING:
    from podserve.settings import Settings


@dataclass(frozen=True)
class ModelVersion:
    """One model version whose listing passed the cheap checks (digests may still be pending)."""

    name: str
    version: str
    path: Path
    manifest: Manifest
    listing: Listing
    signer: Signer | None = None  # set when a trusted key's signature was verified


class ModelRepository:
    """Resolve, list and verify the models under one root.

    ``trust`` (from the settings: trusted keys, required signatures) applies to every
    version opened here; model and version directories that are symbolic links are refused.
    """

    def __init__(self, root: Path | str, trust: TrustPolicy | None = None) -> None:
        self.root = Path(root)
        self.trust = trust or TrustPolicy()

    @classmethod
    def from_settings(cls, settings: Settings, root: Path | str | None = None) -> ModelRepository:
        """The repository at ``root`` (default: the settings' model root) with their trust."""
        return cls(
            settings.model_root if root is None else root, TrustPolicy.from_settings(settings)
        )

    def check_root(self) -> None:
        root = self.root
        if not root.exists():
            raise RootNotFoundError(f"model root {root} does not exist (volume not mounted?)")
        if not root.is_dir():
            raise RootNotFoundError(f"model root {root} is not a directory")
        if not os.access(root, os.R_OK | os.X_OK):
            raise RootNotReadableError(f"model root {root} is not readable (permission denied)")

    def models(self) -> list[str]:
        """Names of the model directories under the root (hidden and invalid names skipped)."""
        self.check_root()
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and _valid_model(p.name)
        )

    def versions(self, name: str) -> list[str]:
        """Versions of a model, oldest first (numeric order); temporary pull dirs ignored."""
        self.check_root()
        model_dir = self.root / check_model_name(name)
        refuse_link(model_dir, "model directory")
        if not model_dir.is_dir():
            raise ModelNotFoundError(f"model {name!r} not found under {self.root}")
        if not os.access(model_dir, os.R_OK | os.X_OK):
            raise RootNotReadableError(f"{model_dir} is not readable (permission denied)")
        return sorted(
            (
                p.name
                for p in model_dir.iterdir()
                if p.is_dir() and p.name.isdigit() and int(p.name) > 0
            ),
            key=int,
        )

    def resolve(self, name: str, version: str | None = None) -> tuple[str, Path]:
        """The pinned version, or the newest one."""
        versions = self.versions(name)
        if version is not None:
            check_version(version)
            if version not in versions:
                raise ModelNotFoundError(f"model {name!r} has no version {version}")
        elif not versions:
            raise ModelNotFoundError(f"model {name!r} has no versions under {self.root / name}")
        else:
            version = versions[-1]
        path = self.root / name / version
        refuse_link(path, "version directory")
        return version, path

    def open(self, name: str, version: str | None = None) -> ModelVersion:
        """Signature, manifest and listing checks: precise errors before any heavy read."""
        version, path = self.resolve(name, version)
        return open_version(path, name, version, self.trust)

    def verify(
        self, name: str, version: str | None = None, *, algorithm: Algorithm | None = None
    ) -> ModelVersion:
        """Open and hash every file; raises on the first problem."""
        mv = self.open(name, version)
        verify_digests(mv.listing, algorithm=algorithm)
        return mv


def open_version(path: Path, name: str, version: str, trust: TrustPolicy) -> ModelVersion:
    """Check a version directory in trust order: signature, then the bytes it covers."""
    signer = check_signature(path, trust)  # reads model.sig only
    manifest_bytes = read_manifest_bytes(path)
    check_signed_bytes(path, signer, MANIFEST_NAME, manifest_bytes)
    manifest = load_manifest(path, manifest_bytes)
    sums_bytes = read_sums(path)
    check_signed_bytes(path, signer, SUMS_NAME, sums_bytes)
    listing = check_listing(path, manifest, sums_bytes)
    if signer is not None:
        bind_listing(listing, signer)
    return ModelVersion(name, version, path, manifest, listing, signer)


def refuse_link(path: Path, what: str) -> None:
    """A model or version directory must be a real directory: a link could lead anywhere."""
    if path.is_symlink():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise IntegrityError(
            f"{path}: the {what} is a symbolic link (to {target}); refusing it: model and "
            "version directories must be real directories under the model root"
        )


def _valid_model(name: str) -> bool:
    try:
        check_model_name(name)
    except Exception:
        return False
    return True
