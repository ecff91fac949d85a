"""Which code a manifest may choose: the operator decides, not whoever writes the volume.

``options.module`` names a class the ``torch`` and ``python`` runtimes construct. Left open,
that is code execution for anyone who can write a manifest (``subprocess:Popen`` with
``kwargs: {args: [...]}`` starts a process). The rules, checked before anything is imported:

* ``package.module:Class`` is imported only when the module is podserve's own or lies under
  a prefix of ``PODSERVE_ALLOWED_MODULES`` (importing a module runs its code, so the check
  comes first); once imported, the class must implement the runtime's contract (the runtime
  checks: an ``nn.Module`` for ``torch``, ``infer()`` or a :class:`podserve.Model` for
  ``python``);
* ``file.py:Class`` — code from the version directory — runs only when
  ``PODSERVE_ALLOW_VOLUME_CODE`` is ``yes``, or ``signed`` and the version carries a valid
  signature from a trusted key (the signature covers the ``.py`` file and the manifest);
* ``kwargs`` are plain data: strings, numbers, booleans, null, lists and string-keyed
  mappings of those (no YAML dates, bytes or sets).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from podserve.errors import CodePolicyError, ManifestError

if TYPE_CHECKING:
    from podserve.settings import Settings
    from podserve.storage.signature import Signer

_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*$")
BUILTIN_PREFIXES = ("podserve",)  # the image's own model classes
MAX_DEPTH = 32


def parse_spec(spec: Any, field: str = "options.module") -> tuple[str, str]:
    """``(target, class name)`` of ``package.module:Class`` or ``file.py:Class``."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ManifestError(
            f"invalid field '{field}': 'package.module:Class' or 'file.py:Class', got {spec!r}"
        )
    target, _, name = spec.rpartition(":")
    if not _IDENTIFIER.fullmatch(name):
        raise ManifestError(f"invalid field '{field}': {name!r} is not a class name")
    if not target.endswith(".py") and not _DOTTED.fullmatch(target):
        raise ManifestError(f"invalid field '{field}': {target!r} is neither a module nor a .py")
    return target, name


def check_module_allowed(
    target: str, settings: Settings, signer: Signer | None, field: str = "options.module"
) -> None:
    """Raise CodePolicyError unless the operator allows this code; imports nothing."""
    if target.endswith(".py"):
        mode = settings.allow_volume_code
        if mode == "yes" or (mode == "signed" and signer is not None):
            return
        why = (
            "volume code is not allowed (PODSERVE_ALLOW_VOLUME_CODE=no)"
            if mode == "no"
            else "the version is not signed by a trusted key (PODSERVE_ALLOW_VOLUME_CODE=signed)"
        )
        raise CodePolicyError(
            f"invalid field '{field}': {target} is code from the model volume and {why}; "
            "install the class in the image and allow its module (PODSERVE_ALLOWED_MODULES), "
            "or let the operator allow volume code"
        )
    prefixes = (*BUILTIN_PREFIXES, *settings.allowed_modules)
    if not any(target == p or target.startswith(p + ".") for p in prefixes):
        allowed = ", ".join(settings.allowed_modules) or "none besides podserve"
        raise CodePolicyError(
            f"invalid field '{field}': module {target!r} is not allowed (allowed prefixes: "
            f"{allowed}); the operator lists importable model packages in "
            "PODSERVE_ALLOWED_MODULES"
        )


def check_kwargs(value: Any, field: str = "options.kwargs") -> dict[str, Any]:
    """``kwargs`` as a mapping of plain data, or a CodePolicyError naming the bad element."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ManifestError(f"invalid field '{field}': a mapping")
    _check_plain(value, field, 0)
    return value


def _check_plain(value: Any, where: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise CodePolicyError(f"invalid field '{where}': nested more than {MAX_DEPTH} deep")
    if value is None or isinstance(value, bool | int | float | str):
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CodePolicyError(f"invalid field '{where}': key {key!r} is not a string")
            _check_plain(item, f"{where}.{key}", depth + 1)
        return
    raise CodePolicyError(
        f"invalid field '{where}': {type(value).__name__} is not plain data (strings, numbers, "
        "booleans, null, lists and mappings)"
    )
