"""Safe extraction of a model archive (``.tar``, ``.tar.gz``/``.tgz``, ``.zip``).

An archive is data from elsewhere and may be hostile, so every member is checked before a
byte is written: no absolute paths or drive letters, no ``..``, no backslashes, no links
(a model version holds regular files only; a link that would leave the destination is named
as such), no devices or FIFOs, no duplicate members, no path that is both a file and a
directory, and a zip member may not inflate beyond its declared size. The declared sizes must
add up to at most :attr:`ArchiveLimits.max_bytes` and fit the destination's free space, and
there may be at most :attr:`ArchiveLimits.max_members` members, so a small compressed
archive cannot fill the volume (``PODSERVE_ARCHIVE_MAX_BYTES`` / ``_MAX_MEMBERS``). Files are
created with ``O_EXCL`` and mode 0644, ignoring the archive's owners and permissions. One
top-level directory holding ``podserve.yaml`` is stripped.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from podserve.errors import IntegrityError, RepositoryError
from podserve.storage.manifest import MANIFEST_NAME

COPY_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class ArchiveLimits:
    """How much one archive may expand to (the settings ``archive_max_*``)."""

    max_bytes: int = 512 * 1024**3
    max_members: int = 100_000


def extract_archive(
    archive: Path, dest: Path, label: str | None = None, limits: ArchiveLimits | None = None
) -> None:
    """Extract ``archive`` into the new or empty ``dest``; raise on any unsafe member."""
    label = label or archive.name
    limits = limits or ArchiveLimits()
    dest.mkdir(parents=True, exist_ok=True)
    lower = archive.name.lower()
    try:
        if lower.endswith(".zip"):
            _extract_zip(archive, dest, label, limits)
        else:
            _extract_tar(archive, dest, label, limits)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise IntegrityError(f"{label}: not a readable archive ({exc})") from None
    _strip_top_directory(dest)


def _check_totals(
    entries: Iterable[tuple[str, bool, int]], dest: Path, label: str, limits: ArchiveLimits
) -> None:
    """Member count, total size, free space, and no path both a file and a directory.

    ``entries`` are (safe relative path, is a directory, declared size).
    """
    files: set[str] = set()
    dirs: set[str] = set()
    total = 0
    for count, (rel, is_dir, size) in enumerate(entries, 1):
        if count > limits.max_members:
            raise IntegrityError(
                f"{label}: more than {limits.max_members} members (archive_max_members); "
                "refusing the archive"
            )
        total += size
        parts = rel.split("/") if rel else []
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if is_dir:
            dirs.add(rel)
        else:
            files.add(rel)
    both = sorted(files & dirs)
    if both:
        raise _unsafe(label, both[0], "is both a file and a directory")
    if total > limits.max_bytes:
        raise IntegrityError(
            f"{label}: expands to {total} bytes, more than archive_max_bytes "
            f"({limits.max_bytes}); refusing the archive"
        )
    free = shutil.disk_usage(dest).free
    if total > free:
        raise RepositoryError(
            f"{label}: expands to {total / 1e6:.1f} MB but {dest} has only "
            f"{free / 1e6:.1f} MB free; nothing was published"
        )


def member_path(name: str, label: str) -> str:
    """The member's safe relative path, or raise naming the member."""
    clean = name.replace("\x00", "\\0")
    if "\\" in name or "\x00" in name:
        raise _unsafe(label, clean, "has a backslash or NUL in its name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise _unsafe(label, clean, "is an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _unsafe(label, clean, "escapes the destination (..)")
    return "/".join(parts)


def _link_target_escapes(member: str, target: str, hard: bool) -> bool:
    if target.startswith("/"):
        return True
    base = "" if hard else posixpath.dirname(member)
    joined = posixpath.normpath(posixpath.join(base, target))
    return joined == ".." or joined.startswith("../")


def _refuse_link(label: str, name: str, target: str, hard: bool) -> IntegrityError:
    if _link_target_escapes(name, target, hard):
        return _unsafe(label, name, f"is a link to {target!r} that escapes the destination")
    return _unsafe(label, name, "is a link; a model version holds regular files only")


def _unsafe(label: str, name: str, why: str) -> IntegrityError:
    return IntegrityError(f"{label}: member {name!r} {why}; refusing the archive")


def _extract_tar(archive: Path, dest: Path, label: str, limits: ArchiveLimits) -> None:
    with tarfile.open(archive, mode="r:*") as tar:
        members = []
        for m in tar:  # counted while reading: a million empty members is refused early
            members.append(m)
            if len(members) > limits.max_members:
                break
        entries = ((member_path(m.name, label), m.isdir(), m.size) for m in members)
        _check_totals(entries, dest, label, limits)
        for m in members:  # check everything before writing anything
            rel = member_path(m.name, label)
            if m.issym() or m.islnk():
                raise _refuse_link(label, m.name, m.linkname, m.islnk())
            if not (m.isfile() or m.isdir()):
                raise _unsafe(label, m.name, "is not a regular file or directory")
            if rel == "" and not m.isdir():
                raise _unsafe(label, m.name, "has an empty name")
        for m in members:
            rel = member_path(m.name, label)
            if m.isdir():
                _safe_join(dest, rel, label).mkdir(parents=True, exist_ok=True)
                continue
            src = tar.extractfile(m)
            if src is None:
                raise _unsafe(label, m.name, "has no data")
            with src:
                _write(src, _safe_join(dest, rel, label), m.size, label, m.name)


def _extract_zip(archive: Path, dest: Path, label: str, limits: ArchiveLimits) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        entries = ((member_path(i.filename, label), i.is_dir(), i.file_size) for i in infos)
        _check_totals(entries, dest, label, limits)
        for info in infos:
            member_path(info.filename, label)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                target = zf.read(info).decode("utf-8", "replace")
                raise _refuse_link(label, info.filename, target, False)
            kind = stat.S_IFMT(mode)  # 0 when the zip records no file type
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                raise _unsafe(label, info.filename, "is not a regular file or directory")
        for info in infos:
            rel = member_path(info.filename, label)
            if info.is_dir():
                _safe_join(dest, rel, label).mkdir(parents=True, exist_ok=True)
                continue
            with zf.open(info) as src:
                _write(src, _safe_join(dest, rel, label), info.file_size, label, info.filename)


def _safe_join(dest: Path, rel: str, label: str) -> Path:
    target = dest / rel
    # Defence in depth: a directory created earlier cannot be a link (links are refused),
    # but check the resolved path anyway.
    if not target.resolve().is_relative_to(dest.resolve()):
        raise _unsafe(label, rel, "escapes the destination")
    return target


def _write(src: IO[bytes], target: Path, declared: int, label: str, name: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise _unsafe(label, name, "appears twice") from None
    written = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(COPY_CHUNK):
            written += len(chunk)
            if written > declared:
                raise _unsafe(label, name, f"inflates beyond its declared {declared} bytes")
            out.write(chunk)


def _strip_top_directory(dest: Path) -> None:
    if (dest / MANIFEST_NAME).exists():
        return
    entries = list(dest.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / MANIFEST_NAME).exists():
        top = entries[0]
        tmp = dest / (".strip-" + top.name)
        top.rename(tmp)
        for child in tmp.iterdir():
            child.rename(dest / child.name)
        shutil.rmtree(tmp)
