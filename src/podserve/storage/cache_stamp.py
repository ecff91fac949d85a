"""Verification stamps: which node-cache blobs are unchanged since the cache hashed them.

When the cache has hashed a blob (while downloading it, or when a pull or ``verify --cache``
checked it) it writes a stamp beside the store, ``DIR/stamps/<algorithm>/ab/ab12…``: the
blob's digest and what ``stat`` said of its inode then (size, inode and device numbers,
modification and change times in nanoseconds). A later pull trusts a blob whose stat still
matches its stamp instead of reading it again; any other blob is hashed (and removed and
fetched again when it does not match its name).

Why that is enough: every write to a file sets its change time (``st_ctime``), and no call
lets a user set it back (``utime`` restores the modification time, and in doing so sets the
change time again). A blob written in place, truncated, replaced or chmod-ed no longer
matches its stamp. What a stamp cannot see is damage without a write (bit rot, a disk
returning other bytes): the server verifies every byte it maps against the manifest's
digests (and the signature) before it reports ready, whatever the pull trusted, and refuses
the version with the file's name. ``pull --rehash`` and ``verify --cache`` hash everything
again and renew the stamps.

Operations of the cache itself change the change time too (a hard link, the use-time
``utime``); the cache renews a stamp after them only when the blob's stat matched its stamp
just before. Removing a version directory changes its blobs' link counts and so their change
times: the next pull hashes those blobs once more. A stamp file is written atomically and not
fsynced: a lost or torn stamp only costs a hash.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stamp:
    """A blob's digest and the stat of its inode when the cache last verified it."""

    digest: str  # "blake3:<hex>": the name it hashed to
    size: int
    ino: int
    dev: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, digest: str, st: os.stat_result) -> Stamp:
        return cls(digest, st.st_size, st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns)

    def matches(self, digest: str, st: os.stat_result) -> bool:
        """The same inode, untouched since the stamp: size, mtime and ctime unchanged."""
        return self == Stamp.of(digest, st)


def read_stamp(path: Path) -> Stamp | None:
    """The stamp at ``path``, or None (absent, torn or from another format)."""
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
        stamp = Stamp(**fields)
    except (OSError, ValueError, TypeError):
        return None
    ints = (stamp.size, stamp.ino, stamp.dev, stamp.mtime_ns, stamp.ctime_ns)
    if not isinstance(stamp.digest, str) or not all(type(v) is int for v in ints):
        return None
    return stamp


def write_stamp(path: Path, stamp: Stamp) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(asdict(stamp)), encoding="utf-8")
    os.replace(tmp, path)


def drop_stamp(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def same_state(a: os.stat_result, b: os.stat_result) -> bool:
    """Two stats of one file with nothing changed between them (size, inode, times)."""
    return Stamp.of("", a) == Stamp.of("", b)
