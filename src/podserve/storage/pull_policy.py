"""``pull --policy``: whether a version already on the volume is checked against its source.

Named after a container's ``imagePullPolicy``, and with the same trade-off:

- ``always`` (the default): a present version's ``SHA256SUMS`` is compared with the source's
  (one small request) before the version is verified and kept. ``push --force`` can replace
  what a version's URI holds, and this is what notices it: the pull fails rather than start
  a pod on bytes the URI no longer names.
- ``if-not-present``: a version already on the volume that can be vouched for on the node is
  used without asking the source at all (no request, and the remote backend is not even
  imported: :func:`present_on_node` runs before :func:`~podserve.storage.sources.base.open_source`).
  A version republished with ``push --force`` is then *not* noticed where it is present, as
  with a mutable image tag and ``IfNotPresent``: use it only when versions are never
  republished.

"Vouched for on the node" is never weaker than what the ``always`` path checks once the
source has answered. The version directory is opened with the trusted keys (its local
``model.sig`` against them, then the manifest and ``SHA256SUMS`` bytes it signs, then the
listing: nothing missing, nothing unlisted). The ``always`` path checks the same local
files: it reads only ``SHA256SUMS`` from the source, never the source's ``model.sig``, and
the server checks this signature again at load. Then, through the node cache, every file
must still be the blob inode the cache verified (its stamp matches: see
:mod:`~podserve.storage.cache_stamp`); nothing is hashed, and any file the cache cannot
vouch for sends the pull to the source. Without a cache there are no stamps: every file is
hashed, as the ``always`` path does after its request.

Anything else goes to the source exactly as ``always`` does: an absent version (a partial
one lives in ``.tmp-<version>``, not at the destination), a file changed since it was
verified, ``--rehash``, a size-only load (``verify: size``, unsigned: no stamp is trusted),
or any problem opening the version, which the ``always`` path then reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from podserve.errors import ConfigurationError, PodserveError
from podserve.storage.cache import NodeCache
from podserve.storage.cache_pull import load_skips_digests, unvouched
from podserve.storage.download import Reporter
from podserve.storage.integrity import verify_digests
from podserve.storage.repository import ModelRepository, ModelVersion
from podserve.storage.sources.base import ARCHIVE_SUFFIXES

PullPolicy = Literal["always", "if-not-present"]
PULL_POLICIES: tuple[PullPolicy, ...] = get_args(PullPolicy)


def check_policy(policy: str) -> PullPolicy:
    """``policy`` if it is one of :data:`PULL_POLICIES`; else a ConfigurationError (exit 2)."""
    for known in PULL_POLICIES:
        if policy == known:
            return known
    raise ConfigurationError(f"unknown pull policy {policy!r}: use {' or '.join(PULL_POLICIES)}")


def present_on_node(
    uri: str,
    root: Path,
    name: str,
    version: str,
    repo: ModelRepository,
    cache: NodeCache | None,
    rep: Reporter,
) -> ModelVersion | None:
    """``if-not-present``: the version at ``root/name/version`` if the node can vouch for it
    without the source (see the module docstring), else None (why: in ``rep``)."""
    dest = root / name / version
    if not dest.is_dir():
        return None  # absent: a partial pull lives in .tmp-<version>, never here
    if cache is not None and uri.split("?", 1)[0].lower().endswith(ARCHIVE_SUFFIXES):
        return None  # the pull refuses --cache with an archive, as always
    mv, why = _open_vouched(repo, name, version, cache)
    if mv is None:
        rep.message(f"pull policy if-not-present: {why}; asking the source")
        return None
    if cache is not None:
        cache.record(dest)
    rep.message(
        f"pull policy if-not-present: {dest} is present and verified on this node; "
        "no request was made to the source (a version republished there is not noticed)"
    )
    return mv


def _open_vouched(
    repo: ModelRepository, name: str, version: str, cache: NodeCache | None
) -> tuple[ModelVersion | None, str]:
    """The opened version if the node vouches for every file, else (None, why not)."""
    try:
        mv = repo.open(name, version)  # the trusted keys, manifest, listing: as always
        if cache is None:
            verify_digests(mv.listing)  # no stamps without a cache: hash every file
            return mv, ""
        why = _unvouched(mv, cache)
    except PodserveError as exc:
        return None, exc.message
    except OSError as exc:
        return None, f"{exc.filename}: {exc.strerror}"
    return (mv, "") if why is None else (None, why)


def _unvouched(mv: ModelVersion, cache: NodeCache) -> str | None:
    """Why the cache cannot vouch for every file of ``mv`` without hashing, or None."""
    if cache.rehash:
        return "--rehash hashes every file again"
    if load_skips_digests(mv.manifest, mv.signer):
        return "the server checks sizes only (verify: size, unsigned), so no stamp is trusted"
    for rel, *_ in unvouched(cache, mv):
        return f"{rel} is not the file the node cache verified (its stamp does not match)"
    return None
