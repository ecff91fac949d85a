"""The rendered ScaledObject against KEDA's CRD schema, with unknown fields rejected."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from podserve.autoscale.keda import (
    Policy,
    ScalingRules,
    ScalingSettings,
    find_schema_dir,
    render_scaled_object,
    render_trigger_authentication,
    to_yaml,
    validate,
)
from podserve.errors import ConfigurationError

SETTINGS = ScalingSettings(
    min_replicas=0,
    max_replicas=8,
    target=250,
    activation_value=2.5,
    polling_interval=10,
    cooldown_period=120,
    scale_down=ScalingRules(60, (Policy("Pods", 1, 60),)),
)


def scaled_object(**kw: Any) -> dict[str, Any]:
    return render_scaled_object(
        SETTINGS, name="w", deployment="podserve-worker", queue="podserve-requests", **kw
    )


def test_the_keda_crds_ship_in_the_package() -> None:
    assert (find_schema_dir() / "keda.sh_scaledobjects.yaml").is_file()


def test_rendered_objects_are_valid_and_round_trip_as_yaml() -> None:
    objects = [scaled_object(), render_trigger_authentication()]
    for obj in objects:
        validate(obj)
    assert list(yaml.safe_load_all(to_yaml(*objects))) == objects


def test_trigger_is_rabbitmq_queue_length_over_the_management_api() -> None:
    spec = scaled_object()["spec"]
    trigger = spec["triggers"][0]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"] == {
        "protocol": "http",
        "queueName": "podserve-requests",
        "mode": "QueueLength",
        "value": "250",
        "activationValue": "2.5",
        "vhostName": "/",
    }
    assert trigger["authenticationRef"] == {"name": "podserve-rabbitmq"}
    assert spec["scaleTargetRef"]["name"] == "podserve-worker"
    down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down == {
        "stabilizationWindowSeconds": 60,
        "selectPolicy": "Max",
        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
    }


def test_host_from_env_replaces_the_authentication_ref() -> None:
    obj = scaled_object(host_from_env="RABBITMQ_MANAGEMENT_URL")
    validate(obj)
    assert "authenticationRef" not in obj["spec"]["triggers"][0]
    assert obj["spec"]["triggers"][0]["metadata"]["hostFromEnv"] == "RABBITMQ_MANAGEMENT_URL"


def _broken(path: list[str | int], value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(scaled_object())
    node: Any = obj
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return obj


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (["spec", "pollingIntervall"], 5, "spec"),  # misspelt: unknown field
        (["spec", "triggers", 0, "metdata"], {}, "spec.triggers.0"),
        (["spec", "advanced", "horizontalPodAutoscalerConfig", "behaviour"], {}, "spec.advanced"),
        (["metadata", "nmae"], "x", "metadata"),
        (["spec", "triggers", 0, "metadata", "value"], 250, "spec.triggers.0.metadata.value"),
        (["spec", "pollingInterval"], 0, "spec.pollingInterval"),  # minimum 1
        (["spec", "maxReplicaCount"], "8", "spec.maxReplicaCount"),
    ],
)
def test_unknown_or_wrong_fields_are_rejected(
    path: list[str | int], value: Any, where: str
) -> None:
    with pytest.raises(ConfigurationError, match=rf"ScaledObject invalid at {where}"):
        validate(_broken(path, value))


def test_min_above_max_is_rejected_like_the_crd_rule() -> None:
    obj = _broken(["spec", "minReplicaCount"], 9)
    with pytest.raises(ConfigurationError, match="minReplicaCount must be less than or equal"):
        validate(obj)


def test_missing_trigger_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="triggers"):
        validate(_broken(["spec", "triggers"], []))


@pytest.mark.parametrize(
    ("field", "value"),
    [("min_replicas", -1), ("max_replicas", 0), ("target", 0), ("polling_interval", 0)],
)
def test_settings_check_refuses_what_keda_would(field: str, value: float) -> None:
    from dataclasses import replace

    with pytest.raises(ConfigurationError):
        replace(SETTINGS, **{field: value}).check()


def test_plan_and_render_share_one_scaled_object() -> None:
    """`podserve plan` changes only the scaling settings of the object `render` and deploy/ use."""
    from podserve.kube.render import scaled_object as rendered_scaled_object

    planned = render_scaled_object(SETTINGS, name="w", deployment="d", queue="q")
    rendered = rendered_scaled_object("w", deployment="d", queue="q")
    for obj in (planned, rendered):
        spec = obj["spec"]
        for key in ("pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount"):
            spec.pop(key)
        spec["advanced"]["horizontalPodAutoscalerConfig"].pop("behavior")
        for key in ("value", "activationValue"):
            spec["triggers"][0]["metadata"].pop(key)
    assert planned == rendered
