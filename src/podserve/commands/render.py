"""``podserve render CONFIG``: print or write the Kubernetes manifests for one model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from podserve.commands import Subparsers


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "render",
        help="Kubernetes manifests from a short config",
        description="Render the Deployment, Service, ConfigMap, PDB, claim and (with a queue) "
        "the KEDA-scaled worker for one model. Without --output the manifests go to stdout "
        "for `kubectl apply -f -`; with it, a directory for `kubectl apply -k`.",
    )
    parser.add_argument(
        "config", type=Path, help="YAML: model, version, image, storage, gpu, queue"
    )
    parser.add_argument("-o", "--output", type=Path, help="write one file per object here")
    parser.add_argument(
        "--validate",
        metavar="KEDA_SCHEMAS",
        nargs="?",
        const=True,
        type=Path,
        help="also validate against Kubernetes' schemas (strict) and KEDA's CRDs, those shipped "
        "with podserve or the ones in this directory (needs kubernetes-validate and jsonschema)",
    )
    parser.set_defaults(handler=_render)


def _render(args: argparse.Namespace) -> int:
    from podserve.errors import ConfigurationError
    from podserve.kube import render

    objects = render.render(render.load_config(args.config))
    if args.validate is not None:
        from podserve.kube import schemas

        crds = schemas.KEDA_CRDS if args.validate is True else args.validate
        problems = schemas.validate(objects, crds)
        if problems:
            raise ConfigurationError("schema violations: " + "; ".join(problems))
    if args.output is None:
        sys.stdout.write(render.to_yaml(objects))
    else:
        for path in render.write(objects, args.output):
            print(path)
    return 0
