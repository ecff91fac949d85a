"""Signed versions: podserve's check against the model-signing library's own verify."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from podserve.errors import ConfigurationError, IntegrityError, SignatureError
from podserve.storage.integrity import digest_files, format_sums, verify_digests
from podserve.storage.repository import ModelRepository
from podserve.storage.signature import (
    SIGNATURE_NAME,
    TrustPolicy,
    load_trusted_keys,
    sign_version,
    statement_of,
)


def make_key(directory: Path, name: str) -> tuple[Path, Path]:
    """An EC P-256 key pair as ``podserve keygen`` writes it: NAME.key, NAME.pub."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private = directory / f"{name}.key"
    public = directory / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """A trusted key (its .pub in trusted/) and an unknown one (elsewhere)."""
    trusted_priv, _ = make_key(tmp_path / "trusted", "release")
    trusted_priv = trusted_priv.rename(tmp_path / "release.key")  # private key outside the dir
    other_priv, _ = make_key(tmp_path / "other", "intruder")
    return {"trusted_dir": tmp_path / "trusted", "release": trusted_priv, "intruder": other_priv}


@pytest.fixture
def signed(staged: Path, keys: dict[str, Path]) -> Path:
    """The staged ``ident/1`` signed with the trusted key; returns the version directory."""
    version = staged / "ident" / "1"
    sign_version(version, keys["release"])
    return version


def policy(keys: dict[str, Path], require: bool = False) -> TrustPolicy:
    return TrustPolicy(load_trusted_keys(keys["trusted_dir"]), require)


def library_verify(version: Path, public_key: Path) -> None:
    """The model-signing library's own verification (hashes every file again)."""
    from model_signing import verifying

    verifying.Config().use_elliptic_key_verifier(public_key=public_key).verify(
        version, version / SIGNATURE_NAME
    )


def podserve_verify(version: Path, trust: TrustPolicy) -> None:
    """What load does: signature and metadata first, then one pass of digests."""
    mv = ModelRepository(version.parent.parent, trust).open("ident", version.name)
    verify_digests(mv.listing)


def test_signed_version_verifies_and_names_its_signer(signed: Path, keys: dict[str, Path]) -> None:
    mv = ModelRepository(signed.parent.parent, policy(keys)).open("ident", "1")
    assert mv.signer is not None
    assert mv.signer.key == "release"
    assert mv.signer.describe().startswith("release (sha256:")
    # the signed digests are the ones the load's single pass compares with
    assert {n: f.blake3 for n, f in mv.listing.files.items()} == {
        n: mv.signer.digests[n] for n in mv.listing.files
    }
    verify_digests(mv.listing)
    library_verify(signed, keys["trusted_dir"] / "release.pub")


def test_the_statement_covers_every_file_but_itself_with_blake3(signed: Path) -> None:
    statement = statement_of(signed / SIGNATURE_NAME)
    predicate = statement["predicate"]
    assert predicate["serialization"]["method"] == "files"
    assert predicate["serialization"]["hash_type"] == "blake3"
    names = {r["name"] for r in predicate["resources"]}
    assert names == {"podserve.yaml", "SHA256SUMS", "weights.safetensors", "sub/config.json"}
    # model.sig is not listed in SHA256SUMS either: it cannot cover itself
    assert SIGNATURE_NAME not in (signed / "SHA256SUMS").read_text()


def _flip_weight(version: Path) -> None:
    path = version / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))


def _rewrite_consistently(version: Path) -> None:
    """An attacker with write access: new weights, SHA256SUMS and manifest digests to match."""
    _flip_weight(version)
    names = ["weights.safetensors", "sub/config.json"]
    digests = digest_files(version, names)
    (version / "SHA256SUMS").write_text(format_sums({n: d[1] for n, d in digests.items()}))
    manifest = yaml.safe_load((version / "podserve.yaml").read_text())
    manifest["files"] = {n: {"size": d[0], "blake3": d[2]} for n, d in digests.items()}
    (version / "podserve.yaml").write_text(yaml.safe_dump(manifest))


def _change_module(version: Path) -> None:
    manifest = yaml.safe_load((version / "podserve.yaml").read_text())
    manifest["options"] = {"module": "subprocess:Popen", "kwargs": {"args": ["true"]}}
    (version / "podserve.yaml").write_text(yaml.safe_dump(manifest))


def _add_listed_file(version: Path) -> None:
    (version / "extra.json").write_text("{}")
    sums = (version / "SHA256SUMS").read_text()
    digest = digest_files(version, ["extra.json"])["extra.json"][1]
    (version / "SHA256SUMS").write_text(sums + f"{digest}  extra.json\n")


def _remove_file(version: Path) -> None:
    (version / "sub" / "config.json").unlink()
    sums = [ln for ln in (version / "SHA256SUMS").read_text().splitlines() if "config" not in ln]
    (version / "SHA256SUMS").write_text("\n".join(sums) + "\n")


@pytest.mark.parametrize(
    ("tamper", "error", "reason"),
    [
        (_flip_weight, IntegrityError, r"weights\.safetensors: BLAKE3 checksum mismatch"),
        (_rewrite_consistently, SignatureError, r"podserve\.yaml: modified after signing"),
        (_change_module, SignatureError, r"podserve\.yaml: modified after signing"),
        (_add_listed_file, SignatureError, r"SHA256SUMS: modified after signing"),
        (_remove_file, SignatureError, r"SHA256SUMS: modified after signing"),
    ],
)
def test_podserve_refuses_what_the_library_refuses(
    signed: Path,
    keys: dict[str, Path],
    tamper: Callable[[Path], None],
    error: type[Exception],
    reason: str,
) -> None:
    tamper(signed)
    with pytest.raises(ValueError, match="Signature mismatch"):
        library_verify(signed, keys["trusted_dir"] / "release.pub")
    with pytest.raises(error, match=reason):
        podserve_verify(signed, policy(keys))


def test_an_unlisted_extra_file_is_refused_by_both(signed: Path, keys: dict[str, Path]) -> None:
    (signed / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="Extra files"):
        library_verify(signed, keys["trusted_dir"] / "release.pub")
    with pytest.raises(IntegrityError, match=r"notes\.txt: not listed in SHA256SUMS"):
        podserve_verify(signed, policy(keys))


def test_a_version_signed_by_an_unknown_key_is_refused(staged: Path, keys: dict[str, Path]) -> None:
    version = staged / "ident" / "1"
    sign_version(version, keys["intruder"])
    with pytest.raises(SignatureError, match=r"model\.sig: signed by an unknown key .*release"):
        podserve_verify(version, policy(keys))


def test_a_forged_statement_does_not_verify(signed: Path, keys: dict[str, Path]) -> None:
    bundle = json.loads((signed / SIGNATURE_NAME).read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "0" * 64
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (signed / SIGNATURE_NAME).write_text(json.dumps(bundle))
    with pytest.raises(SignatureError, match=r"model\.sig: the signature does not verify"):
        podserve_verify(signed, policy(keys))


def test_garbage_signature_file(signed: Path, keys: dict[str, Path]) -> None:
    (signed / SIGNATURE_NAME).write_text("not json")
    with pytest.raises(SignatureError, match=r"model\.sig: not a model-signing bundle"):
        podserve_verify(signed, policy(keys))


def test_unsigned_versions_pass_unless_signatures_are_required(
    staged: Path, keys: dict[str, Path]
) -> None:
    podserve_verify(staged / "ident" / "1", policy(keys))
    with pytest.raises(SignatureError, match=r"ident/1: unsigned \(model\.sig missing\)"):
        podserve_verify(staged / "ident" / "1", policy(keys, require=True))


def test_requiring_signatures_without_keys_is_a_configuration_error(tmp_path: Path) -> None:
    from podserve.settings import Settings

    with pytest.raises(ConfigurationError, match="PODSERVE_TRUSTED_KEYS_DIR"):
        TrustPolicy.from_settings(Settings(require_signature=True))
    (tmp_path / "bad.pub").write_text("nope")
    with pytest.raises(ConfigurationError, match=r"bad\.pub: not a PEM public key"):
        load_trusted_keys(tmp_path)


def test_a_library_default_sha256_signature_is_refused_with_the_reason(
    staged: Path, keys: dict[str, Path]
) -> None:
    from model_signing import hashing, signing

    version = staged / "ident" / "1"
    config = hashing.Config().use_file_serialization()  # SHA-256, the library's default
    config.set_ignored_paths(paths=[SIGNATURE_NAME])
    signing.Config().set_hashing_config(config).use_elliptic_key_signer(
        private_key=keys["release"]
    ).sign(version, version / SIGNATURE_NAME)
    library_verify(version, keys["trusted_dir"] / "release.pub")
    with pytest.raises(SignatureError, match="files/sha256 hashing; podserve verifies"):
        podserve_verify(version, policy(keys))


def test_signing_twice_replaces_the_signature(signed: Path, keys: dict[str, Path]) -> None:
    first = (signed / SIGNATURE_NAME).read_bytes()
    sign_version(signed, keys["release"])
    assert (signed / SIGNATURE_NAME).read_bytes() != first  # ECDSA signatures are randomised
    assert not list(signed.glob(".model.sig*"))
    podserve_verify(signed, policy(keys))


def test_a_copied_signed_version_still_verifies(signed: Path, keys: dict[str, Path]) -> None:
    copy = signed.parent.parent.parent / "copy" / "ident" / "1"
    shutil.copytree(signed, copy)
    podserve_verify(copy, policy(keys))
