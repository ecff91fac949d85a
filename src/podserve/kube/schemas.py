"""Offline schema validation of manifests: Kubernetes kinds and KEDA's CRDs, strictly.

Built-in kinds go through ``kubernetes-validate`` in strict mode (it ships the schemas of
every Kubernetes release, so no cluster or network is needed; without strict a misspelt
field passes). KEDA's kinds are checked against the ``openAPIV3Schema`` of KEDA's own CRDs,
tightened so that unknown fields are rejected as the API server's strict field validation
would. A kind with no schema is an error, never a silent pass.

Both validators are development tools (the ``dev`` extra), imported only when used.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from podserve.errors import ConfigurationError

# The oldest Kubernetes release the manifests must apply to; the newest bundled one is checked too.
OLDEST_KUBERNETES = "1.30"
KEDA_KINDS = {"ScaledObject", "ScaledJob", "TriggerAuthentication"}
# The third-party CRDs, shipped in the package (see crds/README.md for their source).
CRDS = Path(__file__).resolve().parent / "crds"
KEDA_CRDS = CRDS / "keda"


def validate(objects: Iterable[Mapping[str, Any]], keda_schema_dir: Path = KEDA_CRDS) -> list[str]:
    """Every schema violation in a manifest set, one sentence each."""
    try:
        import jsonschema
        import kubernetes_validate
    except ImportError as exc:  # pragma: no cover - both are in the dev extra
        raise ConfigurationError(
            f"schema validation needs {exc.name}: pip install kubernetes-validate jsonschema"
        ) from exc
    problems: list[str] = []
    for obj in objects:
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if obj.get("kind") in KEDA_KINDS:
            schema = keda_schema(keda_schema_dir, str(obj["kind"]), str(obj["apiVersion"]))
            validator = jsonschema.Draft7Validator(schema)
            problems += [
                f"{where}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                for e in validator.iter_errors(obj)
            ]
            continue
        for version in (OLDEST_KUBERNETES, kubernetes_validate.latest_version()):
            try:
                kubernetes_validate.validate(dict(obj), version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(map(str, exc.path))
                problems.append(f"{where}: Kubernetes {version}: {path}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                problems.append(f"{where}: no schema to validate against ({exc.message})")
                break
    return problems


def keda_schema(schema_dir: Path, kind: str, api_version: str) -> dict[str, Any]:
    """The strict JSON schema of one KEDA kind and version, from its CRD file."""
    return copy.deepcopy(_keda_schemas(schema_dir)[(kind, api_version)])


@cache
def _keda_schemas(schema_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    files = sorted(schema_dir.glob("*.yaml"))
    if not files:
        raise ConfigurationError(f"no KEDA CRD files (*.yaml) in {schema_dir}")
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in files:
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = reject_unknown_fields(version["schema"]["openAPIV3Schema"])
                schemas[(spec["names"]["kind"], f"{spec['group']}/{version['name']}")] = schema
    return schemas


def reject_unknown_fields(schema: dict[str, Any]) -> dict[str, Any]:
    """Close every object that lists its properties, as strict field validation does.

    OpenAPI in a CRD means "prune unknown fields" where JSON Schema means "allow them"; an
    object marked ``x-kubernetes-preserve-unknown-fields`` or with its own
    ``additionalProperties`` (a map) stays open.
    """
    out = copy.deepcopy(schema)
    _close(out)
    # Every object has metadata; the CRD schema leaves it as a bare object.
    out.setdefault("properties", {})["metadata"] = {"type": "object"}
    return out


def _close(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _close(item)
        return
    if not isinstance(node, dict):
        return
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    for value in node.values():
        _close(value)


def load_documents(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML stream, skipping empty documents."""
    return [doc for doc in yaml.safe_load_all(text) if doc]
