"""``podserve keygen NAME``: an EC P-256 signing key pair for ``podserve sign``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from podserve.commands import Subparsers
from podserve.errors import ConfigurationError


def register(sub: Subparsers) -> None:
    keygen = sub.add_parser(
        "keygen",
        help="create an EC P-256 signing key pair (NAME.key, NAME.pub)",
        description="Write NAME.key (private, mode 0600: keep it out of the cluster) and "
        "NAME.pub (public: mount it in PODSERVE_TRUSTED_KEYS_DIR). The same as "
        "`openssl ecparam -name prime256v1 -genkey -noout -out NAME.key && openssl ec -in "
        "NAME.key -pubout -out NAME.pub`.",
    )
    keygen.add_argument("name", type=Path, help="path and name of the key pair, e.g. keys/release")
    keygen.set_defaults(handler=_keygen)


def _keygen(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    base: Path = args.name
    private_path, public_path = (
        base.with_name(base.name + ".key"),
        base.with_name(base.name + ".pub"),
    )
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigurationError(f"{path} already exists; not overwriting a key")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    base.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    print(f"wrote {private_path} (private: keep it secret) and {public_path} (public)")
    return 0
