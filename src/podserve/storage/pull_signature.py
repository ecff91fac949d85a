"""``pull`` and signatures: the remote version's ``model.sig``, checked before any download.

The signature and the metadata bytes it covers (``podserve.yaml``, ``SHA256SUMS``) are checked
against the trusted keys before a weight byte is fetched; the signed BLAKE3 digests then
become what each download is verified against while it streams.
"""

from __future__ import annotations

from pathlib import Path

from podserve.errors import IntegrityError, PodserveError
from podserve.storage.download import Reporter, retrying
from podserve.storage.integrity import SIGNATURE_NAME, SUMS_NAME
from podserve.storage.manifest import MANIFEST_NAME
from podserve.storage.signature import Signer, TrustPolicy, check_signature, check_signed_bytes
from podserve.storage.sources.base import Source, SourceNotFoundError


async def signature_bytes(source: Source, rep: Reporter) -> bytes | None:
    """The remote ``model.sig``, or None when the version is unsigned."""
    try:
        return await retrying(lambda: source.read_bytes(SIGNATURE_NAME), rep)
    except SourceNotFoundError:
        return None


def check_remote_signature(
    source: Source,
    tmp: Path,
    signature: bytes | None,
    trust: TrustPolicy,
    manifest_bytes: bytes,
    sums_bytes: bytes,
) -> Signer | None:
    """Before any weight is fetched: the signature, and the metadata bytes it covers."""
    scratch = tmp / "signature"
    scratch.mkdir(exist_ok=True)
    (scratch / SIGNATURE_NAME).unlink(missing_ok=True)
    if signature is not None:
        (scratch / SIGNATURE_NAME).write_bytes(signature)
    try:
        signer = check_signature(scratch, trust)
    except PodserveError as exc:
        raise type(exc)(f"{exc.message.replace(str(scratch), source.describe())}") from None
    where = Path(source.describe())
    check_signed_bytes(where, signer, MANIFEST_NAME, manifest_bytes)
    check_signed_bytes(where, signer, SUMS_NAME, sums_bytes)
    return signer


def download_digest(
    rel: str, blake3: str | None, sha256: str, signer: Signer | None, force_sha256: bool
) -> tuple[str, str]:
    """What one file's download is verified against while it streams: the signed BLAKE3."""
    if signer is not None:
        if blake3 is not None and blake3 != signer.digests[rel]:
            raise IntegrityError(
                f"{rel}: the manifest's BLAKE3 differs from the signed one; nothing was published"
            )
        if not force_sha256:
            return "blake3", signer.digests[rel]
    if blake3 and not force_sha256:
        return "blake3", blake3
    return "sha256", sha256
