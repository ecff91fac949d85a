"""Validation of model and version names: nothing a user or a URI names may escape the root."""

from __future__ import annotations

import re

from podserve.errors import InvalidNameError

_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION = re.compile(r"^[0-9]{1,18}$")


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a safe single path component, else raise."""
    if not _MODEL.fullmatch(name) or ".." in name:
        raise InvalidNameError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' "
            "(at most 128, starting with a letter or digit)"
        )
    return name


def check_version(version: str) -> str:
    """Versions are positive integers, as in Triton's and KServe's repositories."""
    if not _VERSION.fullmatch(version) or int(version) < 1:
        raise InvalidNameError(f"invalid model version {version!r}: versions are integers >= 1")
    return version


def check_relative_path(path: str) -> str:
    """A file path inside a version directory: relative, no '..', no backslashes, no NUL."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise InvalidNameError(f"invalid file path {path!r}: must be relative and stay inside")
    return path


def parse_model_ref(ref: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME:VERSION``: the one way every command and setting names a model."""
    name, sep, version = ref.partition(":")
    if "/" in name:
        raise InvalidNameError(
            f"invalid model reference {ref!r}: write NAME or NAME:VERSION (e.g. minilm:1)"
        )
    check_model_name(name)
    if sep and not version:
        raise InvalidNameError(f"invalid model reference {ref!r}: the version after ':' is empty")
    return name, (check_version(version) if version else None)
