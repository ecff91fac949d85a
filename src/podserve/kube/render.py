"""``podserve render``: Kubernetes manifests from a short config, for users who skip YAML.

The config names what differs between installs; everything else comes from the files of
``deploy/`` themselves (packaged as ``podserve/kube/templates``, a link to ``deploy/`` in the
repository), so a rendered set and ``kubectl kustomize deploy/...`` apply the same pod spec::

    model: minilm
    version: "1"
    image: ghcr.io/podserve/podserve:0.1.0
    storage:
      pvc: podserve-models        # a ReadOnlyMany claim, or:
      # source: s3://my-models/minilm/1   (pulled by an init container; secret: podserve-s3)
    gpu: none                     # none | gpu | mig-1g.10gb (any mig-<N>g.<M>gb profile)
    queue: minilm-requests        # optional: adds the queue worker and its KEDA ScaledObject
    tensor_parallel: 2            # optional: K pods as one LeaderWorkerSet (CPU, pvc storage);
                                  # the ConfigMap <name>-tensor-parallel holds the manifest of
                                  # `podserve split --tp K` (key tensor-parallel.yaml)

The result is checked against :mod:`podserve.kube.policy` before it is returned, so a
config can never render a deployment that breaks the design's rules.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from podserve.errors import ConfigurationError
from podserve.kube import policy

Obj = dict[str, Any]

MODEL_ROOT = "/mnt/models"
TP_MOUNT = "/etc/podserve/tensor-parallel"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MIG = re.compile(r"^mig-\d+g\.\d+gb$")
# Requests/limits per accelerator kind; the same numbers as deploy/components/gpu*.
_GPU_RESOURCES: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "gpu": ({"cpu": "2", "memory": "8Gi"}, {"memory": "16Gi"}),
    "mig": ({"memory": "4Gi"}, {"memory": "8Gi"}),
}


class Storage(BaseModel):
    """Where the weights come from: a shared read-only claim, or a pull at pod start."""

    model_config = ConfigDict(extra="forbid")

    pvc: str | None = Field(None, description="ReadOnlyMany claim holding the model repository.")
    create: bool = Field(True, description="Render the claim too (false: it already exists).")
    size: str = "10Gi"
    storage_class: str | None = None
    source: str | None = Field(None, description="s3://, gs://, https:// URI to pull from.")
    secret: str = Field("podserve-s3", description="Secret with AWS_* (or other) credentials.")
    cache_size: str = Field("5Gi", description="emptyDir size the pull writes into.")

    @field_validator("source")
    @classmethod
    def _source_scheme(cls, value: str | None) -> str | None:
        from podserve.storage.sources.base import REMOTE_SCHEMES

        scheme = value.partition("://")[0].lower() if value and "://" in value else ""
        if value is not None and scheme not in REMOTE_SCHEMES:
            raise ValueError(
                f"source {value!r} must be a URI `podserve pull` reads: "
                + ", ".join(f"{s}://" for s in REMOTE_SCHEMES)
            )
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Storage:
        if (self.pvc is None) == (self.source is None):
            raise ValueError("set exactly one of storage.pvc and storage.source")
        return self


class RenderConfig(BaseModel):
    """The short config ``podserve render`` reads (YAML)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    version: str = "1"
    image: str
    storage: Storage
    gpu: str = "none"
    queue: str | None = None
    replicas: int = Field(2, ge=1)
    tensor_parallel: int | None = Field(None, ge=2, description="K ranks (LeaderWorkerSet).")
    namespace: str | None = None
    # The name of a Secret, not a secret.
    rabbitmq_secret: str = "podserve-rabbitmq"  # noqa: S105

    @field_validator("model", "namespace")
    @classmethod
    def _dns_label(cls, value: str | None) -> str | None:
        # The model name becomes part of object names, which must be DNS labels.
        if value is not None and not (_DNS_LABEL.match(value) and len(value) <= 40):
            raise ValueError(f"{value!r} must be a lowercase DNS label of at most 40 characters")
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: object) -> str:
        # The same rule `serve` and `pull` apply: a pod given anything else fails at start.
        from podserve.errors import InvalidNameError
        from podserve.storage.names import check_version

        try:
            return check_version(str(value))
        except InvalidNameError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _tensor_parallel_shape(self) -> RenderConfig:
        if self.tensor_parallel is None:
            return self
        if self.gpu != "none":
            raise ValueError("tensor_parallel runs on CPU (gloo) only: set gpu: none")
        if self.storage.pvc is None:
            raise ValueError(
                "tensor_parallel needs storage.pvc: each rank reads only its slices from the "
                "shared claim (a pull would copy the whole model into every pod)"
            )
        if self.queue is not None:
            raise ValueError("tensor_parallel with a queue worker is not supported")
        return self

    @field_validator("gpu")
    @classmethod
    def _gpu_kind(cls, value: str) -> str:
        if value not in ("none", "gpu") and not _MIG.match(value):
            raise ValueError("gpu must be none, gpu or a MIG profile such as mig-1g.10gb")
        return value


def load_config(path: Path) -> RenderConfig:
    """Read and validate a render config file."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
    try:
        return RenderConfig.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"invalid field '{'.'.join(str(p) for p in e['loc']) or '(top level)'}': "
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        ]
        raise ConfigurationError(f"{path}: {'; '.join(problems)}") from None


def render(config: RenderConfig) -> list[Obj]:
    """The manifest set for one model; raises ConfigurationError if it breaks the policy."""
    name = f"podserve-{config.model}"
    config_map = _config_map(config, f"{name}-config")
    objects: list[Obj] = [config_map]
    if config.tensor_parallel is not None:
        objects += _tensor_parallel(config, name, config_map)
    else:
        server = _pod_owner(_template("base/deployment.yaml"), name, config, config_map)
        server["spec"]["replicas"] = config.replicas
        objects.append(server)
    for kind in ("service", "pdb"):
        obj = _template(f"base/{kind}.yaml")
        _rename(obj, name, config.model)
        selector = obj["spec"]["selector"]
        labels = selector if kind == "service" else selector["matchLabels"]
        labels["app.kubernetes.io/instance"] = config.model
        objects.append(obj)
    if config.storage.pvc is not None and config.storage.create:
        objects.append(_claim(config))
    if config.queue is not None:
        objects += _queue_objects(config, name, config_map)
    for obj in objects:
        obj["metadata"].setdefault("labels", {})["app.kubernetes.io/part-of"] = "podserve"
        if config.namespace:
            obj["metadata"]["namespace"] = config.namespace
    problems = policy.check(objects)
    if problems:
        raise ConfigurationError("rendered manifests break the policy: " + "; ".join(problems))
    return objects


def to_yaml(objects: list[Obj]) -> str:
    """One multi-document YAML stream, for `kubectl apply -f -`."""
    return "---\n".join(yaml.safe_dump(o, sort_keys=False) for o in objects)


def write(objects: list[Obj], out_dir: Path) -> list[Path]:
    """One file per object plus a kustomization.yaml listing them (`kubectl apply -k`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for obj in objects:
        path = out_dir / f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(obj, sort_keys=False))
        written.append(path)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [p.name for p in written],
    }
    (out_dir / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return [*written, out_dir / "kustomization.yaml"]


def _template(relative: str) -> Obj:
    text = resources.files("podserve.kube").joinpath("templates", relative).read_text()
    return dict(yaml.safe_load(text))


def _env_template() -> dict[str, str]:
    text = resources.files("podserve.kube").joinpath("templates/base/podserve.env").read_text()
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return {key: value for key, value in pairs}


def _config_map(config: RenderConfig, name: str) -> Obj:
    data = _env_template()
    data["PODSERVE_MODEL_ROOT"] = MODEL_ROOT
    data["PODSERVE_MODELS"] = json.dumps([f"{config.model}:{config.version}"])
    data["PODSERVE_DEVICE"] = "cpu" if config.gpu == "none" else "cuda"
    if config.tensor_parallel is not None:
        data |= {
            "PODSERVE_TENSOR_PARALLEL": f"{TP_MOUNT}/tensor-parallel.yaml",
            "PODSERVE_TP_PORT": "29500",
            "PODSERVE_INTRA_OP_THREADS": "1",
        }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "podserve"}},
        "data": data,
    }


def _rename(obj: Obj, name: str, instance: str) -> None:
    obj["metadata"]["name"] = name
    obj["metadata"].setdefault("labels", {})["app.kubernetes.io/instance"] = instance


def _pod_owner(template: Obj, name: str, config: RenderConfig, config_map: Obj) -> Obj:
    """A server or worker Deployment bound to this model, its storage and its accelerator."""
    obj = copy.deepcopy(template)
    _rename(obj, name, config.model)
    obj["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] = config.model
    pod_template = obj["spec"]["template"]
    pod_template["metadata"]["labels"]["app.kubernetes.io/instance"] = config.model
    # A settings change must roll the pods, as kustomize's hashed ConfigMap names do.
    digest = hashlib.sha256(json.dumps(config_map["data"], sort_keys=True).encode()).hexdigest()
    pod_template["metadata"].setdefault("annotations", {})["podserve.io/config-hash"] = digest[:16]
    pod = pod_template["spec"]
    for container in pod["containers"]:
        container["image"] = config.image
        container["envFrom"] = [{"configMapRef": {"name": config_map["metadata"]["name"]}}]
        for item in container.get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None and ref["name"] == "podserve-rabbitmq":
                ref["name"] = config.rabbitmq_secret
        if config.gpu != "none":
            _use_gpu(pod, container, config.gpu)
    volumes = {v["name"]: v for v in pod["volumes"]}
    if config.storage.source is not None:
        patch = _template("components/pull-init/pull-init.yaml")
        init = patch["spec"]["template"]["spec"]["initContainers"][0]
        init["image"] = config.image
        init["args"] = [config.storage.source, f"{MODEL_ROOT}/{config.model}/{config.version}"]
        init["envFrom"] = [{"secretRef": {"name": config.storage.secret}}]
        pod["initContainers"] = [init]
        volumes["models"].clear()
        volumes["models"].update(name="models", emptyDir={"sizeLimit": config.storage.cache_size})
    else:
        volumes["models"]["persistentVolumeClaim"]["claimName"] = config.storage.pvc
    return obj


def _use_gpu(pod: Obj, container: Obj, gpu: str) -> None:
    kind = "gpu" if gpu == "gpu" else "mig"
    requests, limits = _GPU_RESOURCES[kind]
    container["resources"]["requests"].update(requests)
    container["resources"]["limits"].update(limits)
    resource = "nvidia.com/gpu" if kind == "gpu" else f"nvidia.com/{gpu}"
    container["resources"]["limits"][resource] = "1"
    pod["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
    if kind == "mig":
        pod["nodeSelector"]["nvidia.com/mig.strategy"] = "mixed"
    pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def _claim(config: RenderConfig) -> Obj:
    claim = _template("base/pvc.yaml")
    claim["metadata"]["name"] = config.storage.pvc
    claim["spec"]["resources"]["requests"]["storage"] = config.storage.size
    if config.storage.storage_class:
        claim["spec"]["storageClassName"] = config.storage.storage_class
    return claim


def _queue_objects(config: RenderConfig, name: str, config_map: Obj) -> list[Obj]:
    if config.queue is None:
        return []
    worker = _pod_owner(
        _template("components/keda-rabbitmq/worker.yaml"), f"{name}-worker", config, config_map
    )
    container = worker["spec"]["template"]["spec"]["containers"][0]
    container["args"] = [MODEL_ROOT, "--queue", config.queue]
    auth = trigger_authentication(f"{name}-rabbitmq", secret=config.rabbitmq_secret)
    _rename(auth, auth["metadata"]["name"], config.model)
    scaled = scaled_object(
        f"{name}-worker",
        deployment=worker["metadata"]["name"],
        queue=config.queue,
        auth_name=auth["metadata"]["name"],
    )
    _rename(scaled, scaled["metadata"]["name"], config.model)
    return [worker, auth, scaled]


def scaled_object(
    name: str, *, deployment: str, queue: str, auth_name: str | None = "podserve-rabbitmq"
) -> Obj:
    """The queue worker's KEDA ScaledObject: ``deploy/components/keda-rabbitmq/scaledobject.yaml``
    bound to a Deployment and a queue (``auth_name=None``: no TriggerAuthentication)."""
    obj = _template("components/keda-rabbitmq/scaledobject.yaml")
    obj["metadata"]["name"] = name
    obj["spec"]["scaleTargetRef"]["name"] = deployment
    trigger = obj["spec"]["triggers"][0]
    trigger["metadata"]["queueName"] = queue
    if auth_name is None:
        del trigger["authenticationRef"]
    else:
        trigger["authenticationRef"]["name"] = auth_name
    return obj


def trigger_authentication(
    name: str = "podserve-rabbitmq",
    *,
    secret: str = "podserve-rabbitmq",  # noqa: S107 - the Secret's name, not a password
    key: str | None = None,
) -> Obj:
    """KEDA's TriggerAuthentication reading the broker's management URL from a Secret:
    ``deploy/components/keda-rabbitmq/triggerauthentication.yaml``, renamed."""
    obj = _template("components/keda-rabbitmq/triggerauthentication.yaml")
    obj["metadata"]["name"] = name
    ref = obj["spec"]["secretTargetRef"][0]
    ref["name"] = secret
    if key is not None:
        ref["key"] = key
    return obj


def _tensor_parallel(config: RenderConfig, name: str, config_map: Obj) -> list[Obj]:
    """K pods as one LeaderWorkerSet (deploy/components/tensor-parallel) instead of a Deployment."""
    lws = _template("components/tensor-parallel/lws.yaml")
    _rename(lws, name, config.model)
    lws["spec"]["replicas"] = config.replicas
    template = lws["spec"]["leaderWorkerTemplate"]
    template["size"] = config.tensor_parallel
    digest = hashlib.sha256(json.dumps(config_map["data"], sort_keys=True).encode()).hexdigest()
    for role in ("leaderTemplate", "workerTemplate"):
        pod_template = template[role]
        pod_template["metadata"]["labels"]["app.kubernetes.io/instance"] = config.model
        pod_template["metadata"]["annotations"] = {"podserve.io/config-hash": digest[:16]}
        pod = pod_template["spec"]
        for container in pod["containers"]:
            container["image"] = config.image
            container["envFrom"] = [{"configMapRef": {"name": config_map["metadata"]["name"]}}]
        volumes = {v["name"]: v for v in pod["volumes"]}
        volumes["models"]["persistentVolumeClaim"]["claimName"] = config.storage.pvc
        volumes["tensor-parallel"]["configMap"]["name"] = f"{name}-tensor-parallel"
    return [lws]
