"""Which device a model runs on: the manifest's ``device`` wins over the setting.

``auto`` picks ``cuda`` when this process sees a CUDA device, else ``cpu``. An explicit
``cuda``/``cuda:N`` that cannot be honoured, or ``require_accelerator: true`` on a machine
without one, raises :class:`~podserve.errors.AcceleratorUnavailableError` rather than
silently running a GPU-sized model on the CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from podserve.errors import AcceleratorUnavailableError, ConfigurationError

if TYPE_CHECKING:
    from podserve.settings import Settings
    from podserve.storage.manifest import Manifest


def cuda_device_count() -> int:
    """CUDA devices visible through torch (0 when torch is not installed)."""
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def choose_device(manifest: Manifest, settings: Settings, cuda_count: int | None = None) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` for this model; ``cuda_count`` overrides detection."""
    wanted = manifest.device if manifest.device != "auto" else settings.device
    count = cuda_device_count() if cuda_count is None else cuda_count
    if wanted == "auto":
        device = "cuda" if count > 0 else "cpu"
    elif wanted == "cpu":
        device = "cpu"
    elif wanted != "cuda" and not (wanted.startswith("cuda:") and wanted[5:].isdigit()):
        raise ConfigurationError(f"device {wanted!r}: use auto, cpu, cuda or cuda:N")
    else:
        if count == 0:
            raise AcceleratorUnavailableError(
                f"device {wanted!r} requested but no CUDA device is visible to this process"
            )
        index = int(wanted[5:]) if wanted.startswith("cuda:") else 0
        if index >= count:
            raise AcceleratorUnavailableError(
                f"device {wanted!r} requested but only {count} CUDA device(s) are visible"
            )
        device = wanted
    if manifest.require_accelerator and device == "cpu":
        raise AcceleratorUnavailableError(
            "the manifest sets require_accelerator: true but the model would run on the CPU "
            f"(device {wanted!r}, {count} CUDA device(s) visible)"
        )
    return device
