"""``podserve split ROOT MODEL --stages K``: write a pipeline manifest for a model version."""

from __future__ import annotations

import argparse
from pathlib import Path

from podserve.commands import Subparsers


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "split",
        help="plan pipeline stages (layer ranges) or tensor-parallel ranks for a model too big "
        "for one pod",
        description="Read and verify MODEL's weights once, balance its layers over K stages "
        "(by parameter bytes, or by measured compute time) and write a pipeline manifest "
        "with each stage's byte ranges and their BLAKE3 digest. The model's own files are "
        "not touched; the manifest goes to --out (default ./pipelines/MODEL-VERSION-kK.yaml). "
        "With --tp K instead, plan K tensor-parallel ranks: every layer's matrices split by "
        "heads and MLP width, each rank's slices and their BLAKE3 digests recorded "
        "(default ./pipelines/MODEL-VERSION-tpK.yaml).",
    )
    parser.add_argument("root", type=Path, help="model repository root")
    parser.add_argument("model", metavar="MODEL[:VERSION]", help="model (default: newest version)")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--stages", "-k", type=int, help="number of pipeline stages K")
    how.add_argument("--tp", type=int, metavar="K", help="number of tensor-parallel ranks K")
    parser.add_argument(
        "--by",
        choices=["bytes", "time"],
        default="bytes",
        help="balance parameter bytes (memory per pod) or measured per-layer time (throughput)",
    )
    parser.add_argument(
        "--activations",
        choices=["FP32", "FP16"],
        default="FP32",
        help="datatype of the hidden states sent between stages (FP16 halves the traffic)",
    )
    parser.add_argument("--out", type=Path, help="where to write the pipeline manifest")
    parser.set_defaults(handler=_split)


def _split(args: argparse.Namespace) -> int:
    from podserve.pipeline.split import split_model
    from podserve.pipeline.split_manifest import default_path
    from podserve.settings import Settings
    from podserve.storage.repository import parse_model_ref
    from podserve.storage.signature import TrustPolicy

    name, version = parse_model_ref(args.model)
    if args.tp is not None:
        return _split_tp(args, name, version)
    pipeline = split_model(
        args.root,
        name,
        version,
        args.stages,
        by=args.by,
        activations=args.activations,
        trust=TrustPolicy.from_settings(Settings()),
    )
    out = args.out or default_path(pipeline.model, pipeline.version, pipeline.k)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(pipeline.to_yaml(), encoding="utf-8")
    for plan in pipeline.stages:
        parts = (["embeddings"] if plan.embeddings else []) + (["head"] if plan.head else [])
        extra = f" + {' + '.join(parts)}" if parts else ""
        print(
            f"stage {plan.stage}/{pipeline.k}: layers {plan.layers[0]}-{plan.layers[1] - 1}"
            f"{extra}, {plan.bytes / 1e6:.1f} MB"
        )
    print(f"wrote {out}")
    return 0


def _split_tp(args: argparse.Namespace, name: str, version: str | None) -> int:
    from podserve.errors import ConfigurationError
    from podserve.tensor_parallel.manifest import default_path
    from podserve.tensor_parallel.split import split_tensor_parallel

    if args.tp < 1:
        raise ConfigurationError(f"--tp {args.tp}: K must be at least 1")
    plan = split_tensor_parallel(args.root, name, version, args.tp)
    out = args.out or default_path(plan.model, plan.version, plan.k)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(plan.to_yaml(), encoding="utf-8")
    for rank in plan.ranks:
        print(f"rank {rank.rank}/{plan.k}: {len(rank.tensors)} tensors, {rank.bytes / 1e6:.1f} MB")
    print(f"wrote {out}")
    return 0
