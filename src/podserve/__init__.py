"""podserve: serve AI models the cloud-native way.

The public API is small and imported lazily, so ``import podserve`` stays fast (it is part of
every pod's cold start)::

    from podserve import Model, Settings, PodserveError
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Model", "PodserveError", "Settings", "__version__"]

if TYPE_CHECKING:
    from podserve.errors import PodserveError
    from podserve.runtime.model import Model
    from podserve.settings import Settings

_LAZY = {
    "Model": "podserve.runtime.model",
    "Settings": "podserve.settings",
    "PodserveError": "podserve.errors",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'podserve' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
