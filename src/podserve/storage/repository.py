"""The model repository on a volume: ``<root>/<model>/<version>/``.

Read-only by design: nothing here writes under the root, so the volume can be mounted
ReadOnlyMany and the container's root filesystem read-only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from podserve.errors import (
    ModelNotFoundError,
    RootNotFoundError,
    RootNotReadableError,
)
from podserve.storage.integrity import Algorithm, Listing, check_listing, verify_digests
from podserve.storage.manifest import Manifest, load_manifest
from podserve.storage.names import check_model_name, check_version
from podserve.storage.names import parse_model_ref as parse_model_ref  # re-exported


@dataclass(frozen=True)
class ModelVersion:
    """One model version whose listing passed the cheap checks (digests may still be pending)."""

    name: str
    version: str
    path: Path
    manifest: Manifest
    listing: Listing


class ModelRepository:
    """Resolve, list and verify the models under one root."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

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
            return version, self.root / name / version
        if not versions:
            raise ModelNotFoundError(f"model {name!r} has no versions under {self.root / name}")
        return versions[-1], self.root / name / versions[-1]

    def open(self, name: str, version: str | None = None) -> ModelVersion:
        """Manifest and listing checks: precise errors before any heavy read."""
        version, path = self.resolve(name, version)
        manifest = load_manifest(path)
        listing = check_listing(path, manifest)
        return ModelVersion(name, version, path, manifest, listing)

    def verify(
        self, name: str, version: str | None = None, *, algorithm: Algorithm | None = None
    ) -> ModelVersion:
        """Open and hash every file; raises on the first problem."""
        mv = self.open(name, version)
        verify_digests(mv.listing, algorithm=algorithm)
        return mv


def _valid_model(name: str) -> bool:
    try:
        check_model_name(name)
    except Exception:
        return False
    return True
