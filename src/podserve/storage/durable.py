"""Durable writes of a pulled version: fsync of files and directories, free space first."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from podserve.errors import PermanentTransferError


def check_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise PermanentTransferError(
            f"not enough space on {directory}: {needed / 1e9:.2f} GB needed, "
            f"{free / 1e9:.2f} GB free"
        )


def fsync_tree(directory: Path) -> None:
    for dirpath, _, filenames in os.walk(directory):
        for fname in filenames:
            fd = os.open(os.path.join(dirpath, fname), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
