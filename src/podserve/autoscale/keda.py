"""KEDA ScaledObject settings: the planner's parameters, rendered as YAML, checked against the CRD.

The settings mirror the fields a user writes (``minReplicaCount``, ``pollingInterval``, the
RabbitMQ trigger's ``value`` and ``activationValue``, the HPA ``behavior``), plus the one value
that is not in the object but decides its behaviour: the HPA controller's sync period
(``--horizontal-pod-autoscaler-sync-period``, 15 s by default).

The trigger reads the queue through the management API (``protocol: http``): over AMQP KEDA
counts only ready messages, so a worker busy with a prefetched batch looks idle and can be
scaled to zero mid-batch; the management API counts ready + unacked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from podserve.errors import ConfigurationError
from podserve.kube.render import scaled_object, trigger_authentication
from podserve.kube.schemas import KEDA_CRDS, KEDA_KINDS, keda_problems

PolicyType = Literal["Pods", "Percent"]
SelectPolicy = Literal["Max", "Min", "Disabled"]


@dataclass(frozen=True)
class Policy:
    """One HPA scaling policy: at most ``value`` pods (or percent) per ``period_s`` seconds."""

    type: PolicyType
    value: int
    period_s: int


@dataclass(frozen=True)
class ScalingRules:
    """``behavior.scaleUp`` or ``behavior.scaleDown`` of an HPA."""

    stabilization_window_s: int
    policies: tuple[Policy, ...]
    select_policy: SelectPolicy = "Max"


# The Kubernetes defaults (autoscaling/v2 HorizontalPodAutoscalerBehavior).
DEFAULT_SCALE_UP = ScalingRules(0, (Policy("Percent", 100, 15), Policy("Pods", 4, 15)))
DEFAULT_SCALE_DOWN = ScalingRules(300, (Policy("Percent", 100, 15),))


@dataclass(frozen=True)
class ScalingSettings:
    """What a ScaledObject (and the HPA it creates) decides; KEDA's defaults where it has them."""

    min_replicas: int = 0
    max_replicas: int = 100
    target: float = 20.0  # trigger ``value``: queue messages per replica
    activation_value: float = 0.0
    polling_interval: int = 30
    cooldown_period: int = 300
    scale_up: ScalingRules = DEFAULT_SCALE_UP
    scale_down: ScalingRules = DEFAULT_SCALE_DOWN
    tolerance: float = 0.1  # cluster-wide --horizontal-pod-autoscaler-tolerance
    hpa_sync_s: float = 15.0  # --horizontal-pod-autoscaler-sync-period (not in the object)

    def check(self) -> None:
        """Refuse values KEDA or the HPA would reject, with the field's name."""
        if self.min_replicas < 0:
            raise ConfigurationError("minReplicaCount must be >= 0")
        if self.max_replicas < max(1, self.min_replicas):
            raise ConfigurationError("maxReplicaCount must be >= 1 and >= minReplicaCount")
        if self.target <= 0:
            raise ConfigurationError("trigger value (queue length target) must be > 0")
        if self.activation_value < 0:
            raise ConfigurationError("activationValue must be >= 0")
        if self.polling_interval < 1 or self.cooldown_period < 0 or self.hpa_sync_s <= 0:
            raise ConfigurationError("pollingInterval >= 1, cooldownPeriod >= 0, sync period > 0")
        for rules in (self.scale_up, self.scale_down):
            if not 0 <= rules.stabilization_window_s <= 3600:
                raise ConfigurationError("stabilizationWindowSeconds must be within 0..3600")
            for p in rules.policies:
                if p.value <= 0 or not 0 < p.period_s <= 1800:
                    raise ConfigurationError("policy value > 0 and periodSeconds within 1..1800")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _rules(rules: ScalingRules) -> dict[str, Any]:
    return {
        "stabilizationWindowSeconds": rules.stabilization_window_s,
        "selectPolicy": rules.select_policy,
        "policies": [
            {"type": p.type, "value": p.value, "periodSeconds": p.period_s} for p in rules.policies
        ],
    }


def render_scaled_object(
    settings: ScalingSettings,
    *,
    name: str,
    deployment: str,
    queue: str,
    auth_name: str = "podserve-rabbitmq",
    host_from_env: str | None = None,
    vhost: str = "/",
) -> dict[str, Any]:
    """The ScaledObject for the worker Deployment, scaled on the RabbitMQ queue length.

    The object ``podserve render`` and ``deploy/`` use (:func:`podserve.kube.render.
    scaled_object`), with these settings. The broker address comes from a
    TriggerAuthentication (``auth_name``, the default) or from an environment variable of the
    worker's container (``host_from_env``).
    """
    obj = scaled_object(
        name,
        deployment=deployment,
        queue=queue,
        auth_name=None if host_from_env else auth_name,
    )
    spec = obj["spec"]
    spec.update(
        pollingInterval=settings.polling_interval,
        cooldownPeriod=settings.cooldown_period,
        minReplicaCount=settings.min_replicas,
        maxReplicaCount=settings.max_replicas,
    )
    spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] = {
        "scaleUp": _rules(settings.scale_up),
        "scaleDown": _rules(settings.scale_down),
    }
    metadata = spec["triggers"][0]["metadata"]
    metadata.update(
        value=_number(settings.target),
        activationValue=_number(settings.activation_value),
        vhostName=vhost,
    )
    if host_from_env:
        metadata["hostFromEnv"] = host_from_env
    return obj


def render_trigger_authentication(
    name: str = "podserve-rabbitmq",
    secret: str = "podserve-rabbitmq",  # noqa: S107 - the Secret's name, not a password
    key: str = "management-url",
) -> dict[str, Any]:
    """The TriggerAuthentication of ``deploy/components/keda-rabbitmq``, renamed."""
    return trigger_authentication(name, secret=secret, key=key)


def to_yaml(*objects: dict[str, Any]) -> str:
    return "---\n".join(yaml.safe_dump(o, sort_keys=False) for o in objects)


# --- validation against the CRDs ----------------------------------------------------------------


def find_schema_dir() -> Path:
    """KEDA's CRDs, shipped in the package (``podserve/kube/crds/keda``)."""
    return KEDA_CRDS


def validate(obj: dict[str, Any], schema_dir: Path | None = None) -> None:
    """Raise :class:`ConfigurationError` naming the first field KEDA's CRD (closed) rejects."""
    kind = obj.get("kind")
    if kind not in KEDA_KINDS:
        raise ConfigurationError(f"no KEDA CRD for kind {kind!r}")
    problems = keda_problems(obj, schema_dir or KEDA_CRDS)
    if problems:
        where, message = problems[0]
        raise ConfigurationError(f"{kind} invalid at {where}: {message}")
