"""``podserve sign VERSION_DIR --key KEY``: sign a model version others can then trust."""

from __future__ import annotations

import argparse
from pathlib import Path

from podserve.commands import Subparsers


def register(sub: Subparsers) -> None:
    sign = sub.add_parser(
        "sign",
        help="sign a model version with an EC private key (writes model.sig)",
        description="Verify ROOT/NAME/VERSION, then write VERSION/model.sig: an OpenSSF Model "
        "Signing bundle over every file of the version (BLAKE3 digests), signed offline with "
        "KEY (an EC P-256/P-384/P-521 private key in PEM). Servers trust it when the matching "
        "public key is in PODSERVE_TRUSTED_KEYS_DIR.",
    )
    sign.add_argument("version_dir", type=Path, help="ROOT/NAME/VERSION")
    sign.add_argument("--key", type=Path, required=True, help="EC private key (PEM)")
    sign.set_defaults(handler=_sign)


def _sign(args: argparse.Namespace) -> int:
    from podserve.storage.integrity import verify_digests
    from podserve.storage.pull import split_destination
    from podserve.storage.repository import ModelRepository
    from podserve.storage.signature import key_fingerprint, sign_version

    version_dir: Path = args.version_dir
    root, name, version = split_destination(version_dir)
    mv = ModelRepository(root).open(name, version)  # refuses links, unlisted files, bad manifests
    verify_digests(mv.listing)  # never sign a corrupt copy
    path = sign_version(mv.path, args.key)
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key(args.key.read_bytes(), None)
    print(
        f"signed {name}:{version}: {path} ({len(mv.listing.files) + 2} files, key "
        f"sha256:{key_fingerprint(private.public_key())[:16]})"
    )
    return 0
