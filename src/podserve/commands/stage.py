"""``podserve stage SRC ROOT/NAME/VERSION``: write a model version with its manifest and sums."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from podserve.commands import Subparsers
from podserve.errors import ConfigurationError


def register(sub: Subparsers) -> None:
    stage = sub.add_parser(
        "stage",
        help="write a model version directory with manifest and SHA256SUMS",
        description="Copy weights (a file or a directory) into ROOT/NAME/VERSION with a "
        "podserve.yaml manifest and SHA256SUMS, as the server expects them on the volume.",
    )
    stage.add_argument("src", help="a weight file or a directory of model files")
    stage.add_argument("dest", help="ROOT/NAME/VERSION")
    stage.add_argument("--runtime", choices=["transformers", "torch", "onnx", "python"])
    stage.add_argument("--manifest", help="a podserve.yaml to start from (fields, no files)")
    stage.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME:DTYPE:DIMS",
        help="an input, e.g. text:BYTES: or x:FP32:384 or ids:INT64:-1",
    )
    stage.add_argument("--output", action="append", default=[], metavar="NAME:DTYPE:DIMS")
    stage.add_argument("--max-batch-size", type=int)
    stage.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="runtime option (YAML value), e.g. task=embedding",
    )
    stage.add_argument("--overwrite", action="store_true", help="replace an existing version")
    stage.set_defaults(handler=_stage)


def _tensor(spec: str) -> dict[str, Any]:
    parts = spec.split(":")
    if len(parts) != 3 or not parts[0]:
        raise ConfigurationError(f"tensor {spec!r}: expected NAME:DTYPE:DIMS (DIMS like 4,384)")
    try:
        dims = [int(d) for d in parts[2].split(",") if d.strip()]
    except ValueError:
        raise ConfigurationError(
            f"tensor {spec!r}: dimensions must be integers separated by commas (-1 = any), "
            f"got {parts[2]!r}"
        ) from None
    return {"name": parts[0], "datatype": parts[1].upper(), "shape": dims}


def _stage(args: argparse.Namespace) -> int:
    from podserve.storage.manifest import parse_manifest
    from podserve.storage.staging import collect_files, stage_model

    base: dict[str, Any] = {}
    if args.manifest:
        base = yaml.safe_load(Path(args.manifest).read_text(encoding="utf-8")) or {}
    if args.runtime:
        base["runtime"] = args.runtime
    if args.input:
        base["inputs"] = [_tensor(t) for t in args.input]
    if args.output:
        base["outputs"] = [_tensor(t) for t in args.output]
    if args.max_batch_size is not None:
        base["max_batch_size"] = args.max_batch_size
    for opt in args.option:
        key, sep, value = opt.partition("=")
        if not sep:
            raise ConfigurationError(f"--option {opt!r}: expected KEY=VALUE")
        base.setdefault("options", {})[key] = yaml.safe_load(value)
    base.pop("files", None)
    parse_manifest(yaml.safe_dump(base), "manifest (from flags)")
    files = collect_files(Path(args.src))
    manifest = stage_model(files, Path(args.dest), base, overwrite=args.overwrite)
    total = sum(f.size for f in manifest.files.values())
    print(f"staged {len(files)} files ({total / 1e6:.1f} MB) into {args.dest}")
    return 0
