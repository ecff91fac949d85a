"""Runtime name (the manifest's ``runtime``) → Model class, imported only when used.

Importing a runtime pulls in its framework (torch, onnxruntime), so nothing here is imported
until a model of that runtime is actually created.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from podserve.errors import ManifestError
from podserve.runtime.checks import check_version_options

if TYPE_CHECKING:
    from podserve.runtime.model import Model
    from podserve.settings import Settings
    from podserve.storage.repository import ModelVersion

RUNTIMES: dict[str, str] = {
    "transformers": "podserve.runtime.transformers:TransformersModel",
    "torch": "podserve.runtime.torch:TorchModel",
    "onnx": "podserve.runtime.onnx:OnnxModel",
    "python": "podserve.runtime.python:PythonModel",
}


def create_model(version: ModelVersion, settings: Settings) -> Model:
    """Instantiate (not load) the runtime named by the version's manifest.

    The options are checked first, as ``podserve verify`` checks them: the code policy and
    the files the options name, before the runtime's framework is imported.
    """
    target = RUNTIMES.get(version.manifest.runtime)
    if target is None:
        raise ManifestError(f"{version.path}: invalid field 'runtime': unknown runtime")
    check_version_options(version, settings)
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    model: Model = cls(version, settings)
    return model
