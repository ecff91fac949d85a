"""Offline schema validation of manifests: Kubernetes kinds, KEDA's and LWS's CRDs, strictly.

Built-in kinds go through ``kubernetes-validate`` in strict mode (it ships the schemas of
every Kubernetes release, so no cluster or network is needed; without strict a misspelt
field passes). KEDA's kinds are checked against the ``openAPIV3Schema`` of KEDA's own CRDs,
tightened so that unknown fields are rejected as the API server's strict field validation
would; the LeaderWorkerSet (tensor parallelism) likewise against LWS's CRD. A kind with no
schema is an error, never a silent pass.

``validate`` is the one entry point (``podserve render --validate``, ``podserve plan`` and the
deployment tests all go through it or :func:`keda_problems`). ``kubernetes-validate`` and
``jsonschema`` are development tools (the ``dev`` extra), imported only when used.
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
LWS_KINDS = {"LeaderWorkerSet"}
LWS_CRDS = CRDS / "lws"


def validate(
    objects: Iterable[Mapping[str, Any]],
    keda_schema_dir: Path = KEDA_CRDS,
    lws_schema_dir: Path = LWS_CRDS,
) -> list[str]:
    """Every schema violation in a manifest set, one sentence each."""
    problems: list[str] = []
    for obj in objects:
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if obj.get("kind") in KEDA_KINDS:
            problems += [
                f"{where}: {path}: {msg}" for path, msg in keda_problems(obj, keda_schema_dir)
            ]
        elif obj.get("kind") in LWS_KINDS:
            problems += [
                f"{where}: {path}: {msg}" for path, msg in lws_problems(obj, lws_schema_dir)
            ]
        else:
            problems += _kubernetes_problems(obj, where)
    return problems


def _kubernetes_problems(obj: Mapping[str, Any], where: str) -> list[str]:
    try:
        import kubernetes_validate
    except ImportError as exc:  # pragma: no cover - in the dev extra
        raise ConfigurationError(
            "schema validation needs kubernetes-validate: pip install kubernetes-validate"
        ) from exc
    problems = []
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


# A KEDA object's metadata, closed to what its author writes (the CRD leaves it a bare object).
_KEDA_METADATA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["name"],
    "additionalProperties": False,
}


def keda_problems(obj: Mapping[str, Any], schema_dir: Path = KEDA_CRDS) -> list[tuple[str, str]]:
    """(field path, message) for everything KEDA's CRD (closed) and its CEL rule reject."""
    try:
        import jsonschema
    except ImportError as exc:  # pragma: no cover - in the dev extra
        raise ConfigurationError(
            "KEDA validation needs jsonschema: pip install jsonschema"
        ) from exc
    kind, api_version = str(obj.get("kind")), str(obj.get("apiVersion"))
    try:
        schema = keda_schema(schema_dir, kind, api_version)
    except KeyError:
        return [("<root>", f"no KEDA CRD for {kind} {api_version}")]
    schema["properties"]["metadata"] = _KEDA_METADATA
    errors = sorted(
        jsonschema.Draft7Validator(schema).iter_errors(obj),
        key=lambda e: list(map(str, e.absolute_path)),
    )
    problems = [(".".join(map(str, e.absolute_path)) or "<root>", e.message) for e in errors]
    spec = obj.get("spec", {})
    # The CRD's x-kubernetes-validations rule (CEL), which JSON schema cannot express.
    if (
        not problems
        and kind == "ScaledObject"
        and spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100)
    ):
        problems.append(("spec", "minReplicaCount must be less than or equal to maxReplicaCount"))
    return problems


def lws_problems(obj: Mapping[str, Any], schema_dir: Path = LWS_CRDS) -> list[tuple[str, str]]:
    """(field path, message) for everything the LeaderWorkerSet CRD (closed) rejects."""
    try:
        import jsonschema
    except ImportError as exc:  # pragma: no cover - in the dev extra
        raise ConfigurationError("LWS validation needs jsonschema: pip install jsonschema") from exc
    kind, api_version = str(obj.get("kind")), str(obj.get("apiVersion"))
    try:
        schema = keda_schema(schema_dir, kind, api_version)  # any CRD directory will do
    except KeyError:
        return [("<root>", f"no LeaderWorkerSet CRD for {kind} {api_version}")]
    schema["properties"]["metadata"] = _KEDA_METADATA
    errors = sorted(
        jsonschema.Draft7Validator(schema).iter_errors(obj),
        key=lambda e: list(map(str, e.absolute_path)),
    )
    return [(".".join(map(str, e.absolute_path)) or "<root>", e.message) for e in errors]


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
