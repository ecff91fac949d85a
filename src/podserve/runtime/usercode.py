"""User classes named in a manifest: ``package.module:Class`` or ``model.py:Class``.

What may be named is the operator's decision (:mod:`podserve.runtime.codepolicy`), checked
before anything is imported or executed. A ``.py`` file inside the version directory is part
of the checksummed (and, when signed, signed) model: its bytes are read once, verified, and
executed from memory (``compile``/``exec``), so the code that runs is exactly the code that
was checked, and no ``__pycache__`` is written under the read-only root. An importable
``package.module`` comes from the image, which the operator controls.
"""

from __future__ import annotations

import importlib
import re
import sys
import types
from pathlib import PurePosixPath
from typing import Any

from podserve.errors import ManifestError, ModelDirectoryError
from podserve.runtime.codepolicy import check_module_allowed, parse_spec
from podserve.runtime.loading import VersionReader


def load_class(reader: VersionReader, spec: Any, field: str = "options.module") -> type:
    """Resolve ``spec`` to a class the policy allows; errors name the manifest field."""
    target, name = parse_spec(spec, field)
    check_module_allowed(target, reader.settings, reader.version.signer, field)
    if target.endswith(".py"):
        module = _module_from_version(reader, target)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ManifestError(f"invalid field '{field}': cannot import {target}: {exc}") from None
    cls = getattr(module, name, None)
    if not isinstance(cls, type):
        raise ManifestError(f"invalid field '{field}': {target} has no class {name!r}")
    return cls


def _module_from_version(reader: VersionReader, filename: str) -> types.ModuleType:
    if not reader.has(filename):
        raise ManifestError(
            f"invalid field 'options.module': {filename} is not a file of {reader.version.path}"
        )
    source = reader.small(filename)  # verified before it is executed
    path = reader.version.path / filename
    stem = re.sub(r"\W", "_", PurePosixPath(filename).stem)
    name = f"podserve_user.{reader.version.name}_v{reader.version.version}.{stem}".replace("-", "_")
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module  # dataclasses and typing look the module up while executing
    try:
        exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - verified model code
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ModelDirectoryError(
            f"{path}: failed to import: {type(exc).__name__}: {exc}"
        ) from None
    return module
