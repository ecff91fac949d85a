"""``podserve stage``: write a model version directory (files + manifest + SHA256SUMS).

This is how weights a user has get onto the volume in the layout the server verifies. It
writes only under the destination, into a temporary sibling first, then renames, so a
half-staged version is never visible.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from podserve.errors import ConfigurationError
from podserve.storage.integrity import (
    METADATA_FILES,
    SUMS_NAME,
    check_pickle_suffix,
    digest_files,
    format_sums,
)
from podserve.storage.manifest import MANIFEST_NAME, FileEntry, Manifest
from podserve.storage.names import check_model_name, check_relative_path, check_version

# Files that never belong on the volume (VCS metadata, caches, model cards are fine).
SKIP_NAMES = frozenset({".gitattributes", ".git", "__pycache__", ".DS_Store"})


def collect_files(src: Path) -> dict[str, Path]:
    """{relative path: source path} for a file or a directory tree (symlinks followed once)."""
    if src.is_file():
        return {src.name: src}
    if not src.is_dir():
        raise ConfigurationError(f"{src}: no such file or directory")
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_NAMES)
        for name in sorted(filenames):
            if name in SKIP_NAMES:
                continue
            rel = Path(dirpath, name).relative_to(src).as_posix()
            if rel in METADATA_FILES:  # rewritten by stage; a signature would no longer match
                continue
            out[check_relative_path(rel)] = Path(dirpath, name)
    return out


def stage_model(
    files: Mapping[str, Path],
    dest: Path,
    manifest: Manifest | Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> Manifest:
    """Copy ``files`` into ``dest`` (``<root>/<model>/<version>``) with manifest and sums."""
    dest = Path(dest)
    check_model_name(dest.parent.name)
    check_version(dest.name)
    if dest.exists() and not overwrite:
        raise ConfigurationError(f"{dest} already exists (pass --overwrite to replace it)")
    base = manifest.model_dump() if isinstance(manifest, Manifest) else dict(manifest)
    for rel in files:  # refuse what verify and serve would refuse, before copying anything
        check_pickle_suffix(Path(rel), bool(base.get("allow_torch_load")))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".stage-{dest.name}-", dir=dest.parent))
    try:
        for rel, src in files.items():
            target = tmp / check_relative_path(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
        digests = digest_files(tmp, sorted(files))
        base["files"] = {
            name: FileEntry(size=size, blake3=b3).model_dump()
            for name, (size, _, b3) in sorted(digests.items())
        }
        final = Manifest.model_validate(base)
        (tmp / SUMS_NAME).write_text(
            format_sums({name: sha for name, (_, sha, _) in digests.items()}), encoding="utf-8"
        )
        (tmp / MANIFEST_NAME).write_text(final.to_yaml(), encoding="utf-8")
        for path in [tmp, *tmp.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
