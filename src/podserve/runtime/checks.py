"""What ``serve`` would refuse in a version's options, checked without loading it.

``podserve verify`` (an init container, a CI step) calls :func:`check_version_options` so it
refuses everything the load would refuse before a byte of weights is read: the runtime, the
files the options name, the code policy (:mod:`podserve.runtime.codepolicy`). No framework
is imported here; the runtimes call the same checks when they load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from podserve.errors import ManifestError, PodserveError
from podserve.runtime.codepolicy import check_kwargs, check_module_allowed, parse_spec
from podserve.storage.manifest import MANIFEST_NAME

if TYPE_CHECKING:
    from podserve.settings import Settings
    from podserve.storage.repository import ModelVersion

TASKS = ("embedding", "sequence-classification")


def check_version_options(version: ModelVersion, settings: Settings) -> None:
    """Raise the load's error for a version whose options the load would refuse."""
    check = _CHECKS.get(version.manifest.runtime)
    if check is None:
        raise ManifestError(f"{version.path}: invalid field 'runtime': unknown runtime")
    try:
        check(version, settings)
    except PodserveError as exc:
        if exc.message.startswith("invalid field"):  # name the file, as the manifest parser does
            raise type(exc)(f"{version.path / MANIFEST_NAME}: {exc.message}") from None
        raise


def _has(version: ModelVersion, name: object) -> bool:
    return isinstance(name, str) and name in version.listing.files


def _user_class(version: ModelVersion, settings: Settings) -> None:
    opts = version.manifest.options
    check_kwargs(opts.get("kwargs"))
    target, _ = parse_spec(opts.get("module"))
    check_module_allowed(target, settings, version.signer)
    if target.endswith(".py") and not _has(version, target):
        raise ManifestError(
            f"invalid field 'options.module': {target} is not a file of {version.path}"
        )


def _torch(version: ModelVersion, settings: Settings) -> None:
    for spec in (*version.manifest.inputs, *version.manifest.outputs):
        if spec.datatype == "BYTES":
            raise ManifestError(
                f"invalid field 'inputs/outputs.{spec.name}': the torch runtime takes numeric "
                "tensors (use the transformers or python runtime for text)"
            )
    _user_class(version, settings)
    weights = version.manifest.options.get("weights")
    if weights is None:
        names = [n for n in version.listing.files if n.endswith(".safetensors")]
    elif isinstance(weights, str):
        names = [weights]
    elif isinstance(weights, list) and all(isinstance(n, str) for n in weights):
        names = list(weights)
    else:
        raise ManifestError("invalid field 'options.weights': a file name or a list")
    for name in names:
        if not _has(version, name):
            raise ManifestError(
                f"{version.path}: invalid field 'options.weights': {name} not found"
            )


def _python(version: ModelVersion, settings: Settings) -> None:
    _user_class(version, settings)


def _onnx(version: ModelVersion, settings: Settings) -> None:
    opts = version.manifest.options
    name = opts.get("model", "model.onnx")
    if not _has(version, name):
        raise ManifestError(f"invalid field 'options.model': {name!r} not found")
    if opts.get("task") == "embedding":
        _tokenizer(version)


def _transformers(version: ModelVersion, settings: Settings) -> None:
    opts = version.manifest.options
    task = opts.get("task", "embedding")
    if task not in TASKS:
        raise ManifestError(f"invalid field 'options.task': {task!r}; one of {TASKS}")
    if not _has(version, "config.json"):
        raise ManifestError(f"{version.path}: config.json missing (not a HF model dir)")
    if opts.get("pooling", "mean") not in ("mean", "cls"):
        raise ManifestError("invalid field 'options.pooling': mean or cls")
    _tokenizer(version)


def _tokenizer(version: ModelVersion) -> None:
    name = version.manifest.options.get("tokenizer", "tokenizer.json")
    if not _has(version, name):
        raise ManifestError(f"invalid field 'options.tokenizer': {name} not found")


_CHECKS: dict[str, Callable[[ModelVersion, Settings], None]] = {
    "torch": _torch,
    "python": _python,
    "onnx": _onnx,
    "transformers": _transformers,
}
