"""``runtime: python``: a user class with ``load``/``infer`` for anything else.

Manifest options::

    options:
      module: model.py:Predictor     # a checksummed file of the version, or package.module:Cls
      kwargs: {threshold: 0.5}       # passed to Predictor(**kwargs)

The class needs ``infer(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]`` (batch on
axis 0) and may have ``load(path)``, called once with the version directory, and
``unload()``. Every file of the version is verified (digests) before ``load`` runs, since the
user's code reads them itself. A subclass of :class:`podserve.Model` is used as is instead
(constructed with the version and settings, and responsible for its own reads).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from podserve.errors import InferenceError, ManifestError, ModelDirectoryError, PodserveError
from podserve.runtime.codepolicy import check_kwargs
from podserve.runtime.loading import VersionReader
from podserve.runtime.memory import is_out_of_memory, oom_error
from podserve.runtime.model import Model
from podserve.runtime.placement import choose_device
from podserve.runtime.usercode import load_class


class PythonModel(Model):
    """Adapter from a user class to the model contract."""

    def load(self) -> None:
        reader = VersionReader(self.version, self.settings, self.report)
        opts = self.manifest.options
        kwargs = check_kwargs(opts.get("kwargs"))
        cls = load_class(reader, opts.get("module"))
        device = choose_device(self.manifest, self.settings, cuda_count=_visible_cuda())
        reader.finish(device)  # user code reads the files itself: check them all first
        try:
            if issubclass(cls, Model):
                self._user: Any = cls(self.version, self.settings)
                self._user.load()
            else:
                self._user = cls(**kwargs)
                if callable(getattr(self._user, "load", None)):
                    self._user.load(self.version.path)
        except PodserveError:
            raise
        except Exception as exc:
            raise ModelDirectoryError(
                f"{self.version.path}: {cls.__name__}.load failed: {type(exc).__name__}: {exc}"
            ) from None
        if not callable(getattr(self._user, "infer", None)):
            raise ManifestError(f"invalid field 'options.module': {cls.__name__} has no infer()")

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            result = self._user.infer(inputs)
        except PodserveError:
            raise
        except Exception as exc:
            if is_out_of_memory(exc):  # the batcher splits the batch and retries
                raise oom_error(exc, self.version.name) from None
            raise InferenceError(f"{self.version.name}: {type(exc).__name__}: {exc}") from None
        if not isinstance(result, dict):
            raise InferenceError(f"infer returned {type(result).__name__}, not a dict of arrays")
        out: dict[str, np.ndarray] = {}
        for spec in self.outputs:
            if spec.name not in result:
                raise InferenceError(f"infer returned no output '{spec.name}'")
            value = result[spec.name]
            out[spec.name] = value if isinstance(value, np.ndarray) else np.asarray(value)
        return out

    def unload(self) -> None:
        hook = getattr(getattr(self, "_user", None), "unload", None)
        if callable(hook):
            hook()
        self._user = None


def _visible_cuda() -> int:
    """CUDA devices, without importing torch for a model that may not use it."""
    import sys

    if "torch" not in sys.modules:
        return 0
    from podserve.runtime.placement import cuda_device_count

    return cuda_device_count()
