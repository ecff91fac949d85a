"""deploy/: every kustomization renders, validates strictly offline and keeps the policy."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from podserve.kube import policy, schemas
from podserve.protocol.http import routes
from podserve.settings import Settings
from tests.tools import REPO

DEPLOY = REPO / "deploy"
KUSTOMIZATIONS = [
    DEPLOY / "base",
    *sorted(p for p in (DEPLOY / "overlays").iterdir() if p.is_dir()),
]
Obj = dict[str, Any]


@pytest.fixture(scope="module")
def build(kubectl: str) -> Callable[[str], list[Obj]]:
    cache: dict[str, list[Obj]] = {}

    def run(relative: str) -> list[Obj]:
        if relative not in cache:
            done = subprocess.run(
                [kubectl, "kustomize", str(DEPLOY / relative)],
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            cache[relative] = schemas.load_documents(done.stdout)
        return cache[relative]

    return run


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


COMPONENTS = sorted(p.name for p in (DEPLOY / "components").iterdir() if p.is_dir())


def test_every_overlay_is_covered() -> None:
    names = {p.name for p in KUSTOMIZATIONS}
    expected = {"base", "pull-init", "fill-job", "gpu", "gpu-mig", "keda-rabbitmq", "monitoring"}
    assert expected <= names
    # Each component is rendered and checked through an overlay of the same name.
    assert set(COMPONENTS) <= names


def test_components_compose(tmp_path: Path, kubectl: str, keda_schemas: Path) -> None:
    # What a platform engineer writes for "pulled weights, KEDA worker, MIG, scraped".
    def rel(path: Path) -> str:  # kustomize refuses absolute roots
        return os.path.relpath(path, tmp_path)

    order = ["pull-init", "keda-rabbitmq", "gpu", "gpu-mig", "monitoring"]
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{rel(DEPLOY / 'base')}]\n"
        f"components: [{', '.join(rel(DEPLOY / 'components' / c) for c in order)}]\n"
    )
    done = subprocess.run(
        [kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    objects = schemas.load_documents(done.stdout)
    assert schemas.validate(objects, keda_schemas) == []
    assert policy.check(objects) == []
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    assert len(deployments) == 2
    for deployment in deployments:
        template = deployment["spec"]["template"]
        (container,) = template["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == "1"
        assert "nvidia.com/gpu" not in container["resources"]["limits"]
        assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert [c["name"] for c in deployments[0]["spec"]["template"]["spec"]["initContainers"]] == [
        "pull"
    ]


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_renders_validates_and_keeps_policy(
    path: Path, build: Callable[[str], list[Obj]], keda_schemas: Path
) -> None:
    objects = build(str(path.relative_to(DEPLOY)))
    assert objects
    assert schemas.validate(objects, keda_schemas) == []
    assert policy.check(objects) == []


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_config_maps_hold_real_settings(
    path: Path, build: Callable[[str], list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Settings ignores unknown PODSERVE_* names, so a typo would silently do nothing.
    fields = {f"PODSERVE_{name.upper()}" for name in Settings.model_fields}
    objects = build(str(path.relative_to(DEPLOY)))
    files = mounted_config_maps(objects)  # files in a volume (a manifest), not settings
    for config_map in (
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] not in files
    ):
        unknown = set(config_map["data"]) - fields
        assert not unknown, f"not podserve settings: {sorted(unknown)}"
        for key, value in config_map["data"].items():
            monkeypatch.setenv(key, value)
        try:
            Settings()
        except ValidationError as exc:
            pytest.fail(f"{config_map['metadata']['name']} does not parse: {exc}")


def mounted_config_maps(node: Any) -> set[str]:
    """Names of the ConfigMaps that pods mount as volumes, anywhere in ``node``."""
    found: set[str] = set()
    if isinstance(node, dict):
        if "configMap" in node and "name" in node:  # a pod volume
            found.add(node["configMap"]["name"])
        for value in node.values():
            found |= mounted_config_maps(value)
    elif isinstance(node, list):
        for item in node:
            found |= mounted_config_maps(item)
    return found


def test_base_serves_from_a_read_only_many_claim(build: Callable[[str], list[Obj]]) -> None:
    objects = build("base")
    claim = one(objects, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert models["persistentVolumeClaim"] == {
        "claimName": claim["metadata"]["name"],
        "readOnly": True,
    }
    service = one(objects, "Service")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"http": 8080, "grpc": 8081}
    assert (
        one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
        == (one(objects, "Deployment")["spec"]["selector"]["matchLabels"])
    )


def test_pull_init_pulls_into_the_pods_own_volume(build: Callable[[str], list[Obj]]) -> None:
    objects = build("overlays/pull-init")
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"] == ["podserve", "pull"]
    assert init["args"][1].startswith("/mnt/models/")
    assert {"secretRef": {"name": "podserve-s3"}} in init["envFrom"]
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert set(models) == {"name", "emptyDir"}


def test_fill_job_writes_once_and_servers_wait(build: Callable[[str], list[Obj]]) -> None:
    objects = build("overlays/fill-job")
    claim = one(objects, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    job = one(objects, "Job")["spec"]["template"]["spec"]
    assert job["containers"][0]["command"] == ["podserve", "pull"]
    assert job["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    server = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert server["initContainers"][0]["command"] == ["podserve", "verify"]


@pytest.mark.parametrize(
    ("overlay", "resource"),
    [("overlays/gpu", "nvidia.com/gpu"), ("overlays/gpu-mig", "nvidia.com/mig-1g.10gb")],
)
def test_gpu_overlays(build: Callable[[str], list[Obj]], overlay: str, resource: str) -> None:
    objects = build(overlay)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    gpu_limits = {k: v for k, v in limits.items() if k.startswith("nvidia.com/")}
    assert gpu_limits == {resource: "1"}
    assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert one(objects, "ConfigMap")["data"]["PODSERVE_DEVICE"] == "cuda"
    assert pod["containers"][0]["image"].endswith("-cuda")


def test_keda_scales_the_worker_from_zero(build: Callable[[str], list[Obj]]) -> None:
    objects = build("overlays/keda-rabbitmq")
    scaled = one(objects, "ScaledObject")["spec"]
    worker = one(objects, "Deployment", scaled["scaleTargetRef"]["name"])
    assert "replicas" not in worker["spec"], "KEDA owns the worker's replica count"
    assert scaled["minReplicaCount"] == 0
    assert scaled["pollingInterval"] > 0
    assert scaled["cooldownPeriod"] > 0
    (trigger,) = scaled["triggers"]
    assert trigger["metadata"]["protocol"] == "http"
    assert {"value", "activationValue", "queueName"} <= set(trigger["metadata"])
    auth = one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    secret = auth["spec"]["secretTargetRef"][0]
    assert secret["parameter"] == "host"
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    amqp = next(e for e in container["env"] if e["name"] == "PODSERVE_AMQP_URL")
    assert amqp["valueFrom"]["secretKeyRef"]["name"] == secret["name"]


def test_keda_protocol_choice_is_explained() -> None:
    text = (DEPLOY / "components/keda-rabbitmq/scaledobject.yaml").read_text()
    assert "protocol: http" in text
    assert "unacknowledged" in text


def test_monitoring_scrapes_the_metrics_route(build: Callable[[str], list[Obj]]) -> None:
    objects = build("overlays/monitoring")
    deployment = one(objects, "Deployment")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert policy.endpoint_of(annotations["prometheus.io/path"]) == routes.METRICS
    ports = [
        p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    ]
    assert int(annotations["prometheus.io/port"]) in ports


def test_signed_models_mount_the_trusted_keys(build: Callable[[str], list[Obj]]) -> None:
    objects = build("overlays/signed-models")
    config = one(objects, "ConfigMap")["data"]
    assert config["PODSERVE_REQUIRE_SIGNATURE"] == "true"
    keys_dir = config["PODSERVE_TRUSTED_KEYS_DIR"]
    assert config["PODSERVE_MODELS"]  # merged into the base's settings, not replacing them
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "trusted-keys")
    assert volume["configMap"]["name"] == "podserve-trusted-keys"
    (container,) = pod["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "trusted-keys")
    assert mount == {"name": "trusted-keys", "mountPath": keys_dir, "readOnly": True}


def test_node_cache_pulls_once_per_node_and_serves_read_only(
    build: Callable[[str], list[Obj]],
) -> None:
    objects = build("overlays/node-cache")
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (init,) = pod["initContainers"]
    args = init["args"]
    cache, dest = args[args.index("--cache") + 1], args[1]
    # Cache and destination on one mount (hard links cannot cross mounts), written by init.
    (mount,) = [m for m in init["volumeMounts"] if m["name"] == "node-cache"]
    assert cache.startswith(mount["mountPath"] + "/")
    assert dest.startswith(mount["mountPath"] + "/models/")
    assert volumes["node-cache"]["hostPath"]["path"] == policy.NODE_CACHE_PATH
    # The server sees only the models directory, read-only.
    (server,) = pod["containers"]
    (models,) = [m for m in server["volumeMounts"] if m["name"] == "models"]
    assert models["readOnly"] is True
    assert volumes["models"]["hostPath"] == {
        "path": policy.NODE_CACHE_PATH + "/models",
        "type": "Directory",
    }
    # A present version is still compared with the bucket unless the operator opts out.
    env = {e["name"]: e["value"] for e in init["env"]}
    assert env["PODSERVE_PULL_POLICY"] == "always"
    assert Settings(pull_policy=env["PODSERVE_PULL_POLICY"]).pull_policy == "always"
    daemon = one(objects, "DaemonSet", "podserve-node-cache")["spec"]["template"]["spec"]
    assert [c["name"] for c in daemon["initContainers"]] == ["prepare", "prepull"]
    prepull = daemon["initContainers"][1]
    config = next(v for v in daemon["volumes"] if v["name"] == "prepull")["configMap"]["name"]
    versions = one(objects, "ConfigMap", config)["data"]["versions"]
    assert "s3://my-models/minilm/1 minilm/1" in versions
    assert "--cache /var/lib/podserve/cache" in prepull["command"][-1]
