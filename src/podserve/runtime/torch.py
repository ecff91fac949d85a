"""``runtime: torch``: a user ``nn.Module`` with weights from safetensors.

Manifest options::

    options:
      module: model.py:Net          # a checksummed file of the version, or package.module:Net
      kwargs: {hidden: 64}          # passed to Net(**kwargs)
      weights: model.safetensors    # or a list; default every .safetensors file

The module is built, then the verified tensors are assigned as its parameters
(``load_state_dict(strict=True, assign=True)``: no copy unless a dtype differs from the
module's). ``forward`` is called with the manifest's inputs as keyword arguments
(``net(x=...)``) and returns a tensor (the first output), a tuple (outputs in manifest order)
or a dict (by output name).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from podserve.errors import (
    InferenceError,
    InvalidRequestError,
    ManifestError,
    ModelDirectoryError,
    PodserveError,
    ResourceExhaustedError,
)
from podserve.runtime.codepolicy import check_kwargs
from podserve.runtime.loading import VersionReader
from podserve.runtime.memory import is_out_of_memory, oom_error
from podserve.runtime.model import Model
from podserve.runtime.placement import choose_device
from podserve.runtime.state_dict import read_state_dict, weight_files
from podserve.runtime.usercode import load_class
from podserve.storage.reader import WeightBuffer
from podserve.v2 import to_numpy_dtype


class TorchModel(Model):
    """A user ``torch.nn.Module`` class named by the manifest."""

    def load(self) -> None:
        for spec in (*self.inputs, *self.outputs):
            if spec.datatype == "BYTES":
                raise ManifestError(
                    f"invalid field 'inputs/outputs.{spec.name}': the torch runtime takes numeric "
                    "tensors (use the transformers or python runtime for text)"
                )
        reader = VersionReader(self.version, self.settings, self.report)
        opts = self.manifest.options
        device = choose_device(self.manifest, self.settings)
        if self.settings.intra_op_threads:
            torch.set_num_threads(self.settings.intra_op_threads)
        kwargs = check_kwargs(opts.get("kwargs"))
        cls = load_class(reader, opts.get("module"))
        if not issubclass(cls, torch.nn.Module):
            raise ManifestError(f"invalid field 'options.module': {cls.__name__} is no nn.Module")
        self._buffers: list[WeightBuffer]
        # Copy-on-write: user code may write to its buffers (a step counter, a cache); pages
        # stay the page cache's, shared by the replicas, until the module writes to them.
        names = weight_files(reader, opts.get("weights"))
        self._buffers, tensors = read_state_dict(reader, names, writable=True)
        try:
            module = cls(**kwargs)
        except PodserveError:
            raise
        except Exception as exc:
            raise ModelDirectoryError(
                f"{self.version.path}: {cls.__name__}(**kwargs) failed: {exc}"
            ) from None
        converted = _assign(module, tensors, str(self.version.path))
        if converted:
            reader.private(f"dtype conversion of {converted} tensors to the module's dtypes")
        if device != "cpu":
            reader.private(f"weights copied to {device}")
        self._device = torch.device(device)
        self._module = module.to(self._device).eval().requires_grad_(False)
        reader.finish(device)
        self.report.details["tensors"] = len(tensors)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        kwargs: dict[str, torch.Tensor] = {}
        for spec in self.inputs:
            arr = inputs.get(spec.name)
            if arr is None:
                raise InvalidRequestError(f"input '{spec.name}' is required")
            arr = arr if arr.flags.writeable else arr.copy()
            kwargs[spec.name] = torch.from_numpy(arr).to(self._device)
        try:
            with torch.inference_mode():
                result = self._module(**kwargs)
        except torch.OutOfMemoryError as exc:
            raise ResourceExhaustedError(f"out of memory: {exc}") from None
        except Exception as exc:
            if is_out_of_memory(exc):  # e.g. the CPU allocator's RuntimeError
                raise oom_error(exc, self.version.name) from None
            raise InferenceError(f"{self.version.name}: forward failed: {exc}") from None
        return self._outputs(result)

    def _outputs(self, result: Any) -> dict[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        if isinstance(result, torch.Tensor):
            values = {names[0]: result}
        elif isinstance(result, tuple | list):
            values = dict(zip(names, result, strict=False))
        elif isinstance(result, dict):
            values = {n: result[n] for n in names if n in result}
        else:
            raise InferenceError(f"forward returned {type(result).__name__}, not tensors")
        out: dict[str, np.ndarray] = {}
        for spec in self.outputs:
            tensor = values.get(spec.name)
            if not isinstance(tensor, torch.Tensor):
                raise InferenceError(f"forward returned no tensor for output '{spec.name}'")
            out[spec.name] = (
                tensor.detach().cpu().numpy().astype(to_numpy_dtype(spec.datatype), copy=False)
            )
        return out

    def unload(self) -> None:
        self._module = torch.nn.Module()
        for buf in getattr(self, "_buffers", []):
            buf.close()
        self._buffers = []


def _assign(module: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str) -> int:
    """Strict load that keeps the verified views as parameters (copy only to change dtype).

    Returns how many tensors had to be converted (copied).
    """
    current = module.state_dict(keep_vars=True)
    missing = sorted(current.keys() - tensors.keys())
    extra = sorted(tensors.keys() - current.keys())
    if missing or extra:
        raise ModelDirectoryError(
            f"{where}: weights do not match {type(module).__name__} "
            f"(missing {missing[:5]}, unexpected {extra[:5]})"
        )
    state = {}
    converted = 0
    for name, tensor in tensors.items():
        want = current[name]
        if tuple(want.shape) != tuple(tensor.shape):
            raise ModelDirectoryError(
                f"{where}: tensor {name} has shape {tuple(tensor.shape)}, the module expects "
                f"{tuple(want.shape)}"
            )
        converted += tensor.dtype != want.dtype
        state[name] = tensor if tensor.dtype == want.dtype else tensor.to(want.dtype)
    module.load_state_dict(state, strict=True, assign=True)
    return converted
