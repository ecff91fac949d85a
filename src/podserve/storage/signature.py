"""Signed model versions: OpenSSF Model Signing bundles, checked against trusted keys.

A signed version carries ``model.sig`` beside its files: a Sigstore bundle (written by the
``model-signing`` library, ``podserve sign``) whose DSSE envelope holds an in-toto statement
listing every file of the version with its BLAKE3 digest, signed with an elliptic-curve key.

The rules podserve applies (THREAT_MODEL.md says why):

* the statement must cover exactly the version's files — every regular file under the
  version directory except ``model.sig`` itself, so ``podserve.yaml`` (which chooses code)
  and ``SHA256SUMS`` are covered too; an extra or a missing file is refused;
* ``model.sig`` is not listed in ``SHA256SUMS`` (it cannot cover itself; its own integrity is
  the signature);
* the digests are BLAKE3 over each whole file, the digest ``podserve stage`` records in the
  manifest, so the weights are hashed once: the bundle's signature is checked first (cheap,
  before any byte of the version is used), the manifest and ``SHA256SUMS`` bytes are checked
  against the statement before they are parsed, and the signed digests become the expected
  digests of the load's single verified read (:func:`bind_listing`).

That is the check ``model_signing.verifying.Config().use_elliptic_key_verifier(...).verify``
makes — same file set, same digest — without its second pass over the weights
(tests/storage/test_signature.py holds the two side by side).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3

from podserve.errors import ConfigurationError, SignatureError
from podserve.storage.integrity import SIGNATURE_NAME, SUMS_NAME, Listing
from podserve.storage.manifest import MANIFEST_NAME

if TYPE_CHECKING:
    from podserve.settings import Settings

__all__ = ["SIGNATURE_NAME", "Signer", "TrustPolicy", "TrustedKey", "sign_version"]
KEY_SUFFIXES = (".pub", ".pem")


@dataclass(frozen=True)
class TrustedKey:
    """One public key of the trusted keys directory."""

    name: str  # the file's stem, e.g. "release" for release.pub
    fingerprint: str  # SHA-256 of the key's PEM, as model-signing records it in the bundle
    path: Path


@dataclass(frozen=True)
class Signer:
    """Who signed a version (shown in model metadata) and the digests they signed."""

    key: str
    fingerprint: str
    digests: dict[str, str]  # relative path -> BLAKE3 hex

    def describe(self) -> str:
        return f"{self.key} (sha256:{self.fingerprint[:16]})"


@dataclass(frozen=True)
class TrustPolicy:
    """Which keys are trusted, and whether unsigned versions are refused."""

    keys: tuple[TrustedKey, ...] = ()
    require: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> TrustPolicy:
        keys = load_trusted_keys(settings.trusted_keys_dir) if settings.trusted_keys_dir else ()
        if settings.require_signature and not keys:
            raise ConfigurationError(
                "PODSERVE_REQUIRE_SIGNATURE is set but no trusted key was found: set "
                "PODSERVE_TRUSTED_KEYS_DIR to a directory of *.pub keys"
            )
        return cls(keys, settings.require_signature)

    @property
    def active(self) -> bool:
        return bool(self.keys) or self.require


def load_trusted_keys(directory: Path) -> tuple[TrustedKey, ...]:
    """The EC public keys (PEM) in ``directory``; Kubernetes' ``..data`` links are followed."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not directory.is_dir():
        raise ConfigurationError(f"trusted keys directory {directory} does not exist")
    keys = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or path.suffix not in KEY_SUFFIXES or not path.is_file():
            continue
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"{path}: not a PEM public key ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ConfigurationError(f"{path}: not an elliptic-curve public key")
        keys.append(TrustedKey(path.stem, key_fingerprint(key), path))
    return tuple(keys)


def key_fingerprint(key: Any) -> str:
    """SHA-256 (hex) of the public key's PEM, the ``hint`` model-signing writes."""
    from cryptography.hazmat.primitives import serialization

    pem = key.public_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    return hashlib.sha256(pem).hexdigest()


def check_signature(version_dir: Path, policy: TrustPolicy) -> Signer | None:
    """Verify ``model.sig`` against the trusted keys; None when unsigned and not required.

    Reads only the signature file: nothing of the version is used before this passes.
    """
    path = version_dir / SIGNATURE_NAME
    if not policy.active:
        return None
    if not path.is_file():
        if policy.require:
            raise SignatureError(
                f"{version_dir}: unsigned ({SIGNATURE_NAME} missing) and "
                "PODSERVE_REQUIRE_SIGNATURE is set; sign it with `podserve sign`"
            )
        return None
    if not policy.keys:
        raise SignatureError(f"{path}: cannot be checked: no trusted keys configured")
    return _verify_bundle(path, policy.keys)


def _verify_bundle(path: Path, keys: tuple[TrustedKey, ...]) -> Signer:
    # The library's own bundle reader and EC verifier (DSSE envelope, PAE, ECDSA, in-toto
    # statement and its root digest): imported only here, it pulls in sigstore.
    from model_signing._signing import sign_ec_key, sign_sigstore_pb

    try:
        bundle = sign_sigstore_pb.Signature.read(path)
        public_key = bundle.bundle.verification_material.public_key
        hint = public_key.hint if public_key is not None else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SignatureError(f"{path}: not a model-signing bundle ({exc})") from None
    candidates = [k for k in keys if k.fingerprint == hint] if hint else list(keys)
    if not candidates:
        trusted = ", ".join(k.name for k in keys)
        raise SignatureError(
            f"{path}: signed by an unknown key (sha256:{str(hint)[:16]}); trusted keys: {trusted}"
        )
    failure = ""
    for key in candidates:
        try:
            signed = sign_ec_key.Verifier(key.path).verify(bundle)
        except Exception as exc:  # cryptography's InvalidSignature, ValueError, KeyError...
            failure = f"{type(exc).__name__}: {exc}".rstrip(": ")
            continue
        return Signer(key.name, key.fingerprint, _digests(path, signed))
    raise SignatureError(f"{path}: the signature does not verify ({failure})")


def _digests(path: Path, signed: Any) -> dict[str, str]:
    serialization = signed.serialization_type
    if serialization.get("method") != "files" or serialization.get("hash_type") != "blake3":
        raise SignatureError(
            f"{path}: signed with {serialization.get('method')}/{serialization.get('hash_type')} "
            "hashing; podserve verifies per-file BLAKE3 signatures (sign with `podserve sign`)"
        )
    digests: dict[str, str] = {}
    for descriptor in signed.resource_descriptors():
        if descriptor.digest.algorithm != "blake3":
            raise SignatureError(f"{path}: {descriptor.identifier} is not a BLAKE3 digest")
        digests[str(descriptor.identifier)] = descriptor.digest.digest_hex
    return digests


def check_signed_bytes(version_dir: Path, signer: Signer | None, name: str, data: bytes) -> None:
    """A metadata file's bytes (manifest, SHA256SUMS) against the signature, before parsing."""
    if signer is None:
        return
    expected = signer.digests.get(name)
    if expected is None:
        raise SignatureError(f"{version_dir / name}: not covered by the signature")
    actual = blake3.blake3(data).hexdigest()
    if actual != expected:
        raise SignatureError(
            f"{version_dir / name}: modified after signing (BLAKE3 {actual[:16]}…, "
            f"signed {expected[:16]}…)"
        )


def check_file_set(where: object, listed: set[str], signer: Signer) -> None:
    """The files of a version (``listed`` by SHA256SUMS) must be exactly the signed ones."""
    present = listed | {MANIFEST_NAME, SUMS_NAME}
    extra = sorted(present - signer.digests.keys())
    missing = sorted(signer.digests.keys() - present)
    if extra:
        raise SignatureError(f"{where}: not covered by the signature: {', '.join(extra[:5])}")
    if missing:
        raise SignatureError(f"{where}: signed but missing: {', '.join(missing[:5])}")


def bind_listing(listing: Listing, signer: Signer) -> None:
    """Make the signed digests the expected ones; the file sets must be equal."""
    where = listing.version_dir
    check_file_set(where, set(listing.files), signer)
    for name, entry in listing.files.items():
        signed = signer.digests[name]
        if entry.blake3 is not None and entry.blake3 != signed:
            raise SignatureError(
                f"{where / name}: the manifest's BLAKE3 differs from the signed one "
                "(modified after signing)"
            )
        entry.blake3 = signed


def sign_version(version_dir: Path, key: Path) -> Path:
    """Write ``model.sig`` for a version with the EC private key ``key`` (PEM); offline."""
    from model_signing import hashing, signing

    if not key.is_file():
        raise ConfigurationError(f"{key}: no such key file")
    hashing_config = hashing.Config().use_file_serialization(  # type: ignore[no-untyped-call]
        hashing_algorithm="blake3", allow_symlinks=False
    )
    # Every file but the signature, .git* files included: podserve serves them all.
    hashing_config.set_ignored_paths(paths=[SIGNATURE_NAME], ignore_git_paths=False)
    config = signing.Config().set_hashing_config(hashing_config)  # type: ignore[no-untyped-call]
    try:
        config.use_elliptic_key_signer(private_key=key)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"{key}: not a usable EC private key ({exc})") from None
    target = version_dir / SIGNATURE_NAME
    tmp = version_dir / f".{SIGNATURE_NAME}.tmp"  # written after hashing, renamed into place
    try:
        config.sign(version_dir, tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def statement_of(path: Path) -> dict[str, Any]:
    """The in-toto statement inside a bundle, unverified (for display and tests)."""
    import base64

    bundle = json.loads(path.read_text(encoding="utf-8"))
    payload: dict[str, Any] = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    return payload
