"""Weight files → a torch state dict, without unpickling and without copies.

safetensors files become views of their verified buffers
(:func:`podserve.runtime.safetensors_view.load_tensors`). ``.pt``/``.pth``/``.bin`` files are
only accepted when the manifest sets ``allow_torch_load`` (``check_listing`` refuses them
otherwise) and are then read with ``torch.load(weights_only=True)`` from the verified bytes,
which restores tensors and plain containers but never runs code from the file.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import PurePosixPath

import torch

from podserve.errors import ModelDirectoryError, UnsafeWeightsError
from podserve.runtime.loading import VersionReader
from podserve.runtime.safetensors_view import load_tensors
from podserve.storage.integrity import TORCH_LOAD_SUFFIXES
from podserve.storage.reader import WeightBuffer


def read_state_dict(
    reader: VersionReader, names: Iterable[str], *, writable: bool = False
) -> tuple[list[WeightBuffer], dict[str, torch.Tensor]]:
    """Read and verify ``names`` (weight files of the version); one merged state dict.

    safetensors tensors view the shared read-only mapping (``writable``: copy-on-write);
    ``torch.load`` makes its own copy, so the report says ``weights: private`` for it.
    """
    buffers: list[WeightBuffer] = []
    tensors: dict[str, torch.Tensor] = {}
    for name in names:
        suffix = PurePosixPath(name).suffix.lower()
        if suffix in TORCH_LOAD_SUFFIXES:
            if not reader.version.manifest.allow_torch_load:
                raise UnsafeWeightsError(
                    f"{reader.version.path / name}: {suffix} files are loaded by unpickling; "
                    "convert them to safetensors or set allow_torch_load: true"
                )
            buf = reader.weights(name)
            part = torch_load(buf)
            reader.private("torch.load copies the tensors out of the file")
        elif suffix == ".safetensors":
            buf = reader.weights(name, writable=writable)
            part = load_tensors(buf.data, str(buf.path))
        else:
            raise ModelDirectoryError(
                f"{reader.version.path / name}: not a weight file (.safetensors expected)"
            )
        buffers.append(buf)
        duplicate = tensors.keys() & part.keys()
        if duplicate:
            raise ModelDirectoryError(
                f"{buf.path}: tensor {sorted(duplicate)[0]!r} also appears in another file"
            )
        tensors.update(part)
    return buffers, tensors


def torch_load(buf: WeightBuffer) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` of verified bytes: tensors only, no code runs."""
    try:
        state = torch.load(io.BytesIO(buf.data.data), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError / RuntimeError for content it refuses
        raise UnsafeWeightsError(
            f"{buf.path}: torch.load(weights_only=True) refused the file: {exc}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelDirectoryError(f"{buf.path}: expected a state dict of named tensors")
    return state


def weight_files(reader: VersionReader, option: object) -> list[str]:
    """``options.weights`` (a name or a list), default every ``.safetensors`` file."""
    if option is None:
        names = [n for n in reader.names if n.endswith(".safetensors")]
    elif isinstance(option, str):
        names = [option]
    elif isinstance(option, list) and all(isinstance(n, str) for n in option):
        names = list(option)
    else:
        raise ModelDirectoryError("invalid field 'options.weights': a file name or a list")
    for name in names:
        if not reader.has(name):
            raise ModelDirectoryError(
                f"{reader.version.path}: invalid field 'options.weights': {name} not found"
            )
    return names
