"""kube/render.py and `podserve render`: every config shape renders valid, policy-clean YAML."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from podserve.cli import main
from podserve.errors import ConfigurationError
from podserve.kube import policy, render, schemas
from tests.tools import REPO

Obj = dict[str, Any]
TEMPLATES = REPO / "src/podserve/kube/templates"
STORAGES = {
    "pvc": {"pvc": "shared-models", "storage_class": "nfs"},
    "s3": {"source": "s3://bucket/minilm/3", "secret": "s3-creds"},
}
GPUS = ["none", "gpu", "mig-1g.10gb"]


def config(storage: str = "pvc", gpu: str = "none", queue: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "model": "minilm",
        "version": "3",
        "image": "registry.example/podserve:0.1.0",
        "storage": STORAGES[storage],
        "gpu": gpu,
    }
    if queue:
        data["queue"] = queue
    return data


def by_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


@pytest.mark.parametrize(
    ("storage", "gpu", "queue"),
    list(itertools.product(STORAGES, GPUS, [None, "minilm-requests"])),
)
def test_every_shape_validates(
    storage: str, gpu: str, queue: str | None, keda_schemas: Path
) -> None:
    objects = render.render(render.RenderConfig.model_validate(config(storage, gpu, queue)))
    assert schemas.validate(objects, keda_schemas) == []
    assert policy.check(objects) == []
    deployments = by_kind(objects, "Deployment")
    assert len(deployments) == (2 if queue else 1)
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert {c["image"] for c in pod["containers"] + pod.get("initContainers", [])} == {
            "registry.example/podserve:0.1.0"
        }
        limits = pod["containers"][0]["resources"]["limits"]
        gpu_limits = {k: v for k, v in limits.items() if k.startswith("nvidia.com/")}
        expected = {"none": {}, "gpu": {"nvidia.com/gpu": "1"}}.get(gpu, {f"nvidia.com/{gpu}": "1"})
        assert gpu_limits == expected
        if storage == "s3":
            (init,) = pod["initContainers"]
            assert init["args"] == ["s3://bucket/minilm/3", "/mnt/models/minilm/3"]
            assert init["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert bool(by_kind(objects, "PersistentVolumeClaim")) == (storage == "pvc")
    assert by_kind(objects, "ConfigMap")[0]["data"]["PODSERVE_MODELS"] == '["minilm:3"]'
    if queue:
        (scaled,) = by_kind(objects, "ScaledObject")
        assert scaled["spec"]["scaleTargetRef"]["name"] == "podserve-minilm-worker"
        assert scaled["spec"]["triggers"][0]["metadata"]["queueName"] == queue


def test_written_directory_builds_with_kustomize(
    tmp_path: Path, kubectl: str, keda_schemas: Path
) -> None:
    path = tmp_path / "podserve.yaml"
    path.write_text(yaml.safe_dump({**config("s3", "gpu", "q1"), "namespace": "ml"}))
    assert main(["render", str(path), "-o", str(tmp_path / "out")]) == 0
    done = subprocess.run(
        [kubectl, "kustomize", str(tmp_path / "out")], capture_output=True, text=True, check=True
    )
    objects = schemas.load_documents(done.stdout)
    assert {o["metadata"]["namespace"] for o in objects} == {"ml"}
    assert len(objects) == 7
    assert schemas.validate(objects, keda_schemas) == []
    assert policy.check(objects) == []


def test_cli_prints_a_stream_and_validates(
    tmp_path: Path, keda_schemas: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "podserve.yaml"
    path.write_text(yaml.safe_dump(config(queue="q2")))
    assert main(["render", str(path), "--validate", str(keda_schemas)]) == 0
    objects = schemas.load_documents(capsys.readouterr().out)
    assert [o["kind"] for o in objects] == [
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
        "Deployment",
        "TriggerAuthentication",
        "ScaledObject",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"storage": {"pvc": "a", "source": "s3://b/c"}}, "exactly one of storage.pvc"),
        ({"storage": {}}, "exactly one of storage.pvc"),
        ({"gpu": "a100"}, "MIG profile"),
        ({"model": "MiniLM_v2"}, "DNS label"),
        ({"replicas": 0}, "replicas"),
        ({"queeu": "typo"}, "queeu"),
    ],
)
def test_bad_configs_are_refused(
    tmp_path: Path, change: dict[str, Any], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "podserve.yaml"
    path.write_text(yaml.safe_dump({**config(), **change}))
    with pytest.raises(ConfigurationError, match=message):
        render.load_config(path)
    assert main(["render", str(path)]) == ConfigurationError.exit_code
    assert message in capsys.readouterr().err


def test_the_templates_are_deploy_itself() -> None:
    """One source: the package's templates are deploy/ (a link), not copies of it."""
    assert TEMPLATES.is_symlink()
    assert TEMPLATES.resolve() == (REPO / "deploy").resolve()


def test_tensor_parallel_renders_one_leader_worker_set(keda_schemas: Path) -> None:
    objects = render.render(render.RenderConfig.model_validate({**config(), "tensor_parallel": 4}))
    assert schemas.validate(objects, keda_schemas) == []
    assert policy.check(objects) == []
    assert by_kind(objects, "Deployment") == []
    (lws,) = by_kind(objects, "LeaderWorkerSet")
    template = lws["spec"]["leaderWorkerTemplate"]
    assert template["size"] == 4
    (config_map,) = by_kind(objects, "ConfigMap")
    assert config_map["data"]["PODSERVE_TENSOR_PARALLEL"].startswith(render.TP_MOUNT)
    for role in ("leaderTemplate", "workerTemplate"):
        pod = template[role]["spec"]
        assert pod["containers"][0]["image"] == "registry.example/podserve:0.1.0"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "shared-models"
        assert volumes["tensor-parallel"]["configMap"]["name"] == "podserve-minilm-tensor-parallel"
    (service,) = by_kind(objects, "Service")
    leader_labels = template["leaderTemplate"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= leader_labels.items()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gpu": "gpu"}, "CPU"),
        ({"storage": STORAGES["s3"]}, "storage.pvc"),
        ({"queue": "q"}, "queue"),
        ({"tensor_parallel": 1}, "greater than or equal to 2"),
    ],
)
def test_tensor_parallel_refuses_what_it_cannot_run(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render.RenderConfig.model_validate({**config(), "tensor_parallel": 2, **change})
