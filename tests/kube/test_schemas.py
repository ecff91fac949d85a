"""kube/schemas.py: strict offline validation really rejects what strictness is for."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from podserve.errors import ConfigurationError
from podserve.kube import render, schemas

Obj = dict[str, Any]


@pytest.fixture
def objects() -> list[Obj]:
    config = render.RenderConfig.model_validate(
        {"model": "m", "image": "i:1", "storage": {"pvc": "models"}, "queue": "q"}
    )
    return render.render(config)


def find(objects: list[Obj], kind: str) -> Obj:
    return next(o for o in objects if o["kind"] == kind)


def test_clean_set_validates(objects: list[Obj], keda_schemas: Path) -> None:
    assert schemas.validate(objects, keda_schemas) == []


def test_misspelt_kubernetes_field_is_rejected(objects: list[Obj], keda_schemas: Path) -> None:
    container = find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")
    problems = schemas.validate(objects, keda_schemas)
    assert any("'resource' was unexpected" in p for p in problems), problems


@pytest.mark.parametrize(
    ("path", "key"),
    [(("spec",), "minReplicas"), (("spec", "triggers", 0), "authRef"), (("spec", "advanced"), "x")],
)
def test_unknown_keda_fields_are_rejected(
    objects: list[Obj], keda_schemas: Path, path: tuple[str | int, ...], key: str
) -> None:
    node: Any = find(objects, "ScaledObject")
    for step in path:
        node = node[step]
    node[key] = 1
    problems = schemas.validate(objects, keda_schemas)
    assert any(f"'{key}' was unexpected" in p for p in problems), problems


def test_keda_types_are_checked(objects: list[Obj], keda_schemas: Path) -> None:
    find(objects, "ScaledObject")["spec"]["minReplicaCount"] = "zero"
    assert any("minReplicaCount" in p for p in schemas.validate(objects, keda_schemas))


def test_trigger_metadata_stays_an_open_map(keda_schemas: Path) -> None:
    # Trigger metadata is a free string map in KEDA's CRD; closing it would be wrong.
    schema = schemas.keda_schema(keda_schemas, "ScaledObject", "keda.sh/v1alpha1")
    trigger = schema["properties"]["spec"]["properties"]["triggers"]["items"]
    assert trigger["properties"]["metadata"]["additionalProperties"] == {"type": "string"}


def test_a_kind_without_schema_is_an_error(keda_schemas: Path) -> None:
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "x"},
    }
    assert any("no schema" in p for p in schemas.validate([monitor], keda_schemas))


def test_missing_keda_schemas_fail_loudly(objects: list[Obj], tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no KEDA CRD files"):
        schemas.validate(copy.deepcopy(objects), tmp_path)
