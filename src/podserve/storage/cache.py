"""The node cache: one content-addressed copy of every weight file on a node.

``podserve pull --cache DIR`` keeps the bytes of every file it downloads here, named by the
digest the manifest records for it, and *materialises* a version by hard-linking those blobs
into ``ROOT/NAME/VERSION``::

    DIR/blobs/blake3/ab/ab12…   a file's bytes (mode 0444), named by its BLAKE3 digest
    DIR/blobs/sha256/…          files whose manifest records no BLAKE3 (SHA256SUMS only)
    DIR/stamps/blake3/ab/ab12…  the blob's stat when the cache last hashed it (cache_stamp)
    DIR/versions/<key>          one line per materialised version: its path (for verify)
    DIR/.incoming/              downloads in progress (journal: a killed pull resumes)
    DIR/.lock                   flock: one pull at a time fills, links or evicts

So a file shared by two versions (or two models) is downloaded and stored once, a version
that changes one shard downloads one shard, and replicas on the node that map the same
version map the same inodes: the page cache holds their weights once.

A hard link *is* the blob: writing to a materialised file would change the blob and every
other version linking it. Blobs and materialised files are therefore read-only (0444). A
cache hit whose stat no longer matches its verification stamp (any write changes the inode's
change time) is hashed again before it is linked, and a damaged blob is removed and fetched
again, never linked; one that still matches is linked without reading it: the server
verifies every byte it loads (:mod:`podserve.storage.cache_stamp` says why that keeps the
guarantee). ``rehash=True`` (``pull --rehash``) hashes every hit, and ``podserve verify
--cache DIR`` hashes every blob and every recorded version.

When ``ROOT`` is on another filesystem than ``DIR``, files are reflinked where the
filesystem can (btrfs, XFS) and copied otherwise; a copy shares neither disk nor memory.

Eviction: a blob is in use while any version links it (``st_nlink > 1``); blobs no version
uses are removed oldest-used first (modification time, touched at every use) until the store
fits its size cap. A cap never removes a blob a present version uses.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from podserve.errors import ConfigurationError, RepositoryError
from podserve.storage.cache_stamp import Stamp, drop_stamp, read_stamp, same_state, write_stamp
from podserve.storage.integrity import Algorithm, hash_file

READ_ONLY = 0o444
FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
Materialised = Literal["link", "reflink", "copy"]


@dataclass(frozen=True)
class BlobKey:
    """A blob's name: the digest algorithm and the lowercase hex digest."""

    algorithm: Algorithm
    digest: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.digest}"


@dataclass(frozen=True)
class Blob:
    key: BlobKey
    path: Path
    size: int
    links: int  # 1: only the store holds it (evictable)
    used: float  # last use (mtime)


class NodeCache:
    """A content-addressed store of weight files on one node.

    ::

        cache = NodeCache(Path("/var/lib/podserve/cache"), max_bytes=200 * 10**9)
        with cache.locked():
            if not cache.check(key, size):      # missing or damaged: fetch it
                ...download to cache.incoming / key.digest...
                cache.adopt(cache.incoming / key.digest, key)
            cache.materialise(key, version_dir / "model.safetensors")
        cache.evict()
    """

    def __init__(
        self, directory: Path | str, max_bytes: int | None = None, *, rehash: bool = False
    ) -> None:
        self.directory = Path(directory)
        if max_bytes is not None and max_bytes < 0:
            raise ConfigurationError("the cache size cap must be positive")
        self.max_bytes = max_bytes
        self.rehash = rehash  # hash every hit, whatever its stamp says
        self.hashed: list[BlobKey] = []  # what this object read to hash, in order
        try:
            for sub in ("blobs", "stamps", "versions", ".incoming"):
                (self.directory / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RepositoryError(f"cannot use cache {self.directory}: {exc.strerror}") from None

    @property
    def incoming(self) -> Path:
        return self.directory / ".incoming"

    def blob_path(self, key: BlobKey) -> Path:
        return self.directory / "blobs" / key.algorithm / key.digest[:2] / key.digest

    def stamp_path(self, key: BlobKey) -> Path:
        return self.directory / "stamps" / key.algorithm / key.digest[:2] / key.digest

    def acquire(self) -> int:
        """Take the cache's exclusive lock (blocking); ``release`` or process death frees it."""
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def release(self, fd: int) -> None:
        os.close(fd)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        fd = self.acquire()
        try:
            yield
        finally:
            self.release(fd)

    def is_locked(self) -> bool:
        """Whether another process holds the lock now (for a 'waiting' message)."""
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    # --- blobs --------------------------------------------------------------------------

    def check(self, key: BlobKey, size: int) -> bool | None:
        """True: the blob is here and unchanged since it was verified (its stamp matches),
        or hashes to its name now. None: absent. A damaged blob (wrong size or digest) is
        removed and False returned: the caller fetches it again."""
        path = self.blob_path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        if st.st_size == size and (
            self.vouches(key, st) or self.hash_and_stamp(key, path, st) == key.digest
        ):
            return True
        path.unlink(missing_ok=True)  # other versions linking it keep the damaged inode
        drop_stamp(self.stamp_path(key))
        return False

    def vouches(self, key: BlobKey, st: os.stat_result) -> bool:
        """Whether ``st`` (of the blob, or of a file linking it) is the stamped, unchanged
        inode: what the cache hashed is what is there (unless ``rehash``)."""
        if self.rehash:
            return False
        stamp = read_stamp(self.stamp_path(key))
        return stamp is not None and stamp.matches(str(key), st)

    def hash_and_stamp(self, key: BlobKey, path: Path, before: os.stat_result) -> str:
        """The digest of ``path`` (the blob, or a file that may link it; ``before``: its stat
        before). Matching: stamp the blob if ``path`` is its inode and nothing changed since."""
        self.hashed.append(key)
        actual = hash_blob(path, key.algorithm)
        if actual != key.digest:
            return actual
        with contextlib.suppress(FileNotFoundError):
            after, blob = path.stat(), self.blob_path(key).stat()
            if same_state(before, after) and same_state(after, blob):
                write_stamp(self.stamp_path(key), Stamp.of(str(key), after))
        return actual

    def adopt(self, path: Path, key: BlobKey) -> Path:
        """Move a downloaded, verified file into the store (read-only, fsynced)."""
        target = self.blob_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path, READ_ONLY)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(path, target)
        _fsync_dir(target.parent)
        # The download verified these bytes while they streamed in (download.py).
        write_stamp(self.stamp_path(key), Stamp.of(str(key), target.stat()))
        return target

    def materialise(self, key: BlobKey, target: Path) -> Materialised:
        """Put the blob at ``target``: a hard link, else a reflink, else a copy (read-only)."""
        blob = self.blob_path(key)
        stamp = read_stamp(self.stamp_path(key))
        stamped = stamp is not None and stamp.matches(str(key), blob.stat())
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        os.utime(blob)  # least-recently-used order for eviction
        try:
            how = self._put(blob, target)
        finally:
            # The link and the utime changed the blob's ctime: renew a stamp that held just
            # before them; a blob changed since it was checked loses its stamp.
            if stamped:
                write_stamp(self.stamp_path(key), Stamp.of(str(key), blob.stat()))
            else:
                drop_stamp(self.stamp_path(key))
        return how

    def _put(self, blob: Path, target: Path) -> Materialised:
        try:
            os.link(blob, target)
            return "link"
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise RepositoryError(f"cannot link {blob} to {target}: {exc.strerror}") from None
        how: Materialised = "reflink" if _reflink(blob, target) else "copy"
        if how == "copy":
            shutil.copyfile(blob, target)
        os.chmod(target, READ_ONLY)
        return how

    def blobs(self) -> list[Blob]:
        out: list[Blob] = []
        for algorithm in ("blake3", "sha256"):
            base = self.directory / "blobs" / algorithm
            if not base.is_dir():
                continue
            for path in base.glob("*/*"):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                key = BlobKey(algorithm, path.name)
                out.append(Blob(key, path, st.st_size, st.st_nlink, st.st_mtime))
        return out

    def usage(self) -> int:
        return sum(b.size for b in self.blobs())

    def evict(self, needed: int = 0, keep: Collection[BlobKey] = ()) -> list[Blob]:
        """Remove unused blobs, oldest-used first, until ``needed`` more bytes fit the cap.

        Call with the lock held. Blobs linked by a version (``st_nlink > 1``) and ``keep``
        (the hits of the pull in progress, not linked yet) are never removed, so the store
        may stay over its cap while the node's versions need it.
        """
        if self.max_bytes is None:
            return []
        blobs = self.blobs()
        used = sum(b.size for b in blobs)
        removed: list[Blob] = []
        unused = (b for b in blobs if b.links == 1 and b.key not in keep)
        for blob in sorted(unused, key=lambda b: b.used):
            if used + needed <= self.max_bytes:
                break
            # Re-read the link count: a pull without the lock (none should) may have linked it.
            with contextlib.suppress(FileNotFoundError):
                if blob.path.stat().st_nlink == 1:
                    blob.path.unlink()
                    drop_stamp(self.stamp_path(blob.key))
                    used -= blob.size
                    removed.append(blob)
        return removed

    # --- materialised versions ----------------------------------------------------------

    def record(self, version_dir: Path) -> None:
        """Remember a version materialised from this cache (``verify --cache`` checks it)."""
        path = str(version_dir.resolve())
        name = hashlib.sha256(path.encode()).hexdigest()[:32]
        (self.directory / "versions" / name).write_text(path + "\n", encoding="utf-8")

    def versions(self) -> list[Path]:
        """Recorded versions still present; records of removed ones are dropped."""
        out: list[Path] = []
        for record in sorted((self.directory / "versions").iterdir()):
            path = Path(record.read_text(encoding="utf-8").strip())
            if path.is_dir():
                out.append(path)
            else:
                record.unlink(missing_ok=True)
        return out

    def verify_blobs(self) -> list[str]:
        """Hash every blob and renew the stamps of good ones; returns the names of damaged
        ones (left in place for inspection, unstamped: the next pull hashes and replaces them)."""
        damaged: list[str] = []
        for b in self.blobs():
            try:
                before = b.path.stat()
            except FileNotFoundError:
                continue
            if self.hash_and_stamp(b.key, b.path, before) != b.key.digest:
                drop_stamp(self.stamp_path(b.key))
                damaged.append(str(b.key))
        return damaged


def hash_blob(path: Path, algorithm: Algorithm) -> str:
    return hash_file(path, algorithm)


def parse_size(text: str) -> int:
    """``500M``, ``20G``, ``1T`` or plain bytes (decimal units, as disks are sold)."""
    units = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    value = text.strip().upper().removesuffix("B")
    unit = value[-1:] if value[-1:] in units and value[-1:] else ""
    number = value[: -len(unit)] if unit else value
    try:
        size = float(number) * units[unit]
    except ValueError:
        raise ConfigurationError(f"cache size {text!r}: expected a number like 50G") from None
    if size <= 0:
        raise ConfigurationError(f"cache size {text!r}: must be positive")
    return int(size)


def _reflink(src: Path, dst: Path) -> bool:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
        except OSError:
            return False
    return True


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
