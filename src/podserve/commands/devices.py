"""``podserve devices [--json] [--check [ROOT]]``: what accelerators this process sees.

``--check`` also reads every manifest to serve (``--model`` or all in ROOT) and decides its
device the way the server will, without loading weights; it exits 4 (the exit code of
:class:`~podserve.errors.AcceleratorUnavailableError`) when a model asks for a GPU this pod
does not have. Use it as an init container (or a pre-flight step) so that a pod scheduled
without its GPU fails visibly (``Init:Error`` with the reason) instead of serving nothing;
``podserve serve`` itself keeps such a model not-ready with the reason in
``/v2/health/ready`` and the repository index.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from podserve.commands import Subparsers


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "devices", help="what accelerators this process sees",
        description="List the GPUs / MIG instances visible to this process (NVML; CUDA_VISIBLE_"
        "DEVICES applied): memory, utilisation, MIG mode, compute capability. With --check, "
        "also decide each model's device as `serve` would and exit 4 if one is refused.",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--torch", action="store_true", help="also ask torch (CUDA build, ordinals by UUID)"
    )
    parser.add_argument(
        "--check", action="store_true",
        help="check the models' device / require_accelerator against what is visible",
    )  # fmt: skip
    parser.add_argument("root", nargs="?", help="repository root for --check (PODSERVE_MODEL_ROOT)")
    parser.add_argument(
        "--model", action="append", dest="models", metavar="NAME[:VERSION]",
        help="model to check (repeat); default: every model in the root",
    )  # fmt: skip
    parser.set_defaults(handler=_devices)


def _devices(args: argparse.Namespace) -> int:
    from podserve.runtime.devices import inventory

    inv = inventory(with_torch=args.torch)
    checks: list[dict[str, Any]] = []
    failed = None
    if args.check:
        checks, failed = _check(args, inv.count)
    if args.json:
        out = inv.to_dict()
        if args.check:
            out["checks"] = checks
        print(json.dumps(out, indent=2))
    else:
        print(inv.render())
        for c in checks:
            print(f"{c['model']}: {c.get('device') or 'refused: ' + c['error']}")
    if failed is not None:
        raise failed
    return 0


def _check(args: argparse.Namespace, cuda_count: int) -> tuple[list[dict[str, Any]], Any]:
    """Each model's device as ``serve`` would choose it; the first refusal is re-raised."""
    from pathlib import Path

    from podserve.errors import PodserveError
    from podserve.runtime.placement import choose_device
    from podserve.settings import Settings
    from podserve.storage.repository import ModelRepository, parse_model_ref

    overrides: dict[str, Any] = {"model_root": Path(args.root)} if args.root else {}
    settings = Settings(**overrides)
    repo = ModelRepository.from_settings(settings)
    refs = [parse_model_ref(r) for r in (args.models or settings.models)]
    if not refs:
        refs = [(name, None) for name in repo.models()]
    checks: list[dict[str, Any]] = []
    failed: PodserveError | None = None
    for name, version in refs:
        entry: dict[str, Any] = {"model": f"{name}:{version}" if version else name}
        try:
            mv = repo.open(name, version)
            entry["model"] = f"{name}:{mv.version}"
            entry["device"] = choose_device(mv.manifest, settings, cuda_count=cuda_count)
        except PodserveError as exc:
            entry["error"] = str(exc)
            failed = failed or type(exc)(f"model {entry['model']}: {exc}")
        checks.append(entry)
    return checks, failed
