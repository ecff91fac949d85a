"""kube/policy.py: each rule catches the mistake it exists for, on a real rendered set."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from podserve.kube import policy, render
from podserve.settings import STOP_MARGIN_SECONDS, Settings, worst_case_stop_seconds
from tests.tools import REPO

Obj = dict[str, Any]


@pytest.fixture
def objects() -> list[Obj]:
    config = render.RenderConfig.model_validate(
        {
            "model": "minilm",
            "image": "example.org/podserve:1",
            "storage": {"pvc": "models"},
            "queue": "minilm-requests",
        }
    )
    return render.render(config)


def kind(objects: list[Obj], wanted: str, index: int = 0) -> Obj:
    return [o for o in objects if o["kind"] == wanted][index]


def server(objects: list[Obj]) -> Obj:
    container: Obj = kind(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return container


def test_rendered_set_is_clean(objects: list[Obj]) -> None:
    assert policy.check(objects) == []


def _writable_model(o: list[Obj]) -> None:
    server(o)["volumeMounts"][0]["readOnly"] = False


def _writable_claim(o: list[Obj]) -> None:
    kind(o, "Deployment")["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"].pop(
        "readOnly"
    )


def _root(o: list[Obj]) -> None:
    kind(o, "Deployment")["spec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot")


def _writable_root_fs(o: list[Obj]) -> None:
    server(o)["securityContext"]["readOnlyRootFilesystem"] = False


def _no_tmp(o: list[Obj]) -> None:
    server(o)["volumeMounts"] = [m for m in server(o)["volumeMounts"] if m["mountPath"] != "/tmp"]


def _probe_elsewhere(o: list[Obj]) -> None:
    server(o)["livenessProbe"]["httpGet"]["path"] = "/healthz"


def _ready_as_liveness(o: list[Obj]) -> None:
    server(o)["livenessProbe"]["httpGet"]["path"] = "/v2/health/ready"


def _no_startup_probe(o: list[Obj]) -> None:
    server(o).pop("startupProbe")


def _probe_grpc_port(o: list[Obj]) -> None:
    server(o)["readinessProbe"]["httpGet"]["port"] = "grpc"


def _short_grace(o: list[Obj]) -> None:
    kind(o, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30


def _longer_drain(o: list[Obj]) -> None:
    kind(o, "ConfigMap")["data"]["PODSERVE_DRAIN_TIMEOUT_SECONDS"] = "60"


def _other_queue(o: list[Obj]) -> None:
    kind(o, "ScaledObject")["spec"]["triggers"][0]["metadata"]["queueName"] = "other"


def _amqp(o: list[Obj]) -> None:
    kind(o, "ScaledObject")["spec"]["triggers"][0]["metadata"]["protocol"] = "amqp"


def _scales_the_server(o: list[Obj]) -> None:
    kind(o, "ScaledObject")["spec"]["scaleTargetRef"]["name"] = "podserve-minilm"


def _scales_nothing(o: list[Obj]) -> None:
    kind(o, "ScaledObject")["spec"]["scaleTargetRef"]["name"] = "gone"


MUTATIONS: dict[str, tuple[Callable[[list[Obj]], None], str]] = {
    "model mount writable": (_writable_model, "must be mounted readOnly"),
    "claim writable": (_writable_claim, "readOnly: true"),
    "root user allowed": (_root, "runAsNonRoot"),
    "root fs writable": (_writable_root_fs, "readOnlyRootFilesystem"),
    "no scratch": (_no_tmp, "writable emptyDir"),
    "probe on a non-route": (_probe_elsewhere, "not a server route"),
    "liveness on ready": (_ready_as_liveness, "must probe the live endpoint"),
    "no startup probe": (_no_startup_probe, "startupProbe missing"),
    "probe on grpc port": (_probe_grpc_port, "not the HTTP port"),
    "grace too short": (_short_grace, "terminationGracePeriodSeconds 30"),
    "drain longer than grace": (_longer_drain, "drain timeout 60"),
    "queue mismatch": (_other_queue, "not the queue the worker consumes"),
    "amqp protocol": (_amqp, "protocol: http"),
    "scales the server": (_scales_the_server, "runs no `podserve worker`"),
    "scales nothing": (_scales_nothing, "not in the manifest set"),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_policy_catches(objects: list[Obj], name: str) -> None:
    mutate, message = MUTATIONS[name]
    broken = copy.deepcopy(objects)
    mutate(broken)
    problems = policy.check(broken)
    assert any(message in p for p in problems), problems


def test_grace_uses_the_settings_defaults_when_unset(objects: list[Obj]) -> None:
    data = kind(objects, "ConfigMap")["data"]
    del data["PODSERVE_DRAIN_TIMEOUT_SECONDS"], data["PODSERVE_DRAIN_GRACE_SECONDS"]
    pod = kind(objects, "Deployment")["spec"]["template"]["spec"]
    fields = Settings.model_fields
    needed = (
        5
        + fields["drain_grace_seconds"].default
        + fields["drain_timeout_seconds"].default
        + STOP_MARGIN_SECONDS
    )
    pod["terminationGracePeriodSeconds"] = int(needed) - 1
    assert any("must be at least" in p for p in policy.check(objects))
    pod["terminationGracePeriodSeconds"] = int(needed)
    assert policy.check(objects) == []


@pytest.mark.parametrize("index", [0, 1], ids=["server", "worker"])
def test_grace_period_covers_prestop_grace_drain_and_the_stop_margin(
    objects: list[Obj], index: int
) -> None:
    """The whole shutdown fits: preStop sleep + drain grace + drain timeout (HTTP, gRPC and
    the queue worker share it) + the margin to unload and exit; one second less is refused."""
    data = kind(objects, "ConfigMap")["data"]
    data["PODSERVE_DRAIN_GRACE_SECONDS"] = "7"
    data["PODSERVE_DRAIN_TIMEOUT_SECONDS"] = "20"
    deployment = kind(objects, "Deployment", index)
    pod = deployment["spec"]["template"]["spec"]
    pre_stop = 5 if "preStop" in pod["containers"][0].get("lifecycle", {}) else 0
    assert (pre_stop == 5) == (index == 0)  # the server pauses for endpoint removal; the worker not
    needed = pre_stop + 7 + 20 + STOP_MARGIN_SECONDS
    assert needed == worst_case_stop_seconds(pre_stop=pre_stop, grace=7, drain_timeout=20)
    pod["terminationGracePeriodSeconds"] = int(needed)
    assert policy.check(objects) == []
    pod["terminationGracePeriodSeconds"] = int(needed) - 1
    (problem,) = policy.check(objects)
    assert f"stop margin {STOP_MARGIN_SECONDS:g} = {needed:g} s" in problem
    assert problem.startswith(f"Deployment/{deployment['metadata']['name']}")


def test_defaults_and_deploy_agree() -> None:
    """deploy/'s pods give the settings' defaults' worst case (their preStop included)."""
    fields = Settings.model_fields
    grace = fields["drain_grace_seconds"].default
    drain = fields["drain_timeout_seconds"].default
    for path in ("base/deployment.yaml", "components/keda-rabbitmq/worker.yaml"):
        (doc,) = [d for d in yaml.safe_load_all((REPO / "deploy" / path).read_text()) if d]
        pod = doc["spec"]["template"]["spec"]
        hook = pod["containers"][0].get("lifecycle", {}).get("preStop", {})
        pre_stop = float(hook["exec"]["command"][-1]) if hook else 0.0
        needed = worst_case_stop_seconds(pre_stop=pre_stop, grace=grace, drain_timeout=drain)
        assert needed <= pod["terminationGracePeriodSeconds"], path


@pytest.mark.parametrize(
    ("container", "queue"),
    [
        ({"command": ["podserve", "worker"], "args": ["--queue", "a"]}, "a"),
        ({"command": ["podserve", "worker"], "args": ["--queue=b"]}, "b"),
        (
            {"command": ["podserve", "worker"], "env": [{"name": "PODSERVE_QUEUE", "value": "c"}]},
            "c",
        ),
        ({"command": ["podserve", "worker"], "envFrom": [{"configMapRef": {"name": "cm"}}]}, "d"),
    ],
)
def test_worker_queue_sources(container: Obj, queue: str) -> None:
    assert policy.worker_queue(container, {"cm": {"PODSERVE_QUEUE": "d"}}) == queue


# --- the node cache's hostPath and its one root container -----------------------------------


@pytest.fixture
def node_cache(kubectl: str) -> list[Obj]:
    import subprocess

    from podserve.kube import schemas
    from tests.tools import REPO

    done = subprocess.run(
        [kubectl, "kustomize", str(REPO / "deploy" / "overlays" / "node-cache")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return schemas.load_documents(done.stdout)


def pod_of(objects: list[Obj], wanted: str) -> Obj:
    spec: Obj = kind(objects, wanted)["spec"]["template"]["spec"]
    return spec


def test_node_cache_overlay_is_clean(node_cache: list[Obj]) -> None:
    assert policy.check(node_cache) == []


def test_host_path_outside_the_node_cache_is_refused(node_cache: list[Obj]) -> None:
    objects = copy.deepcopy(node_cache)
    volume = next(v for v in pod_of(objects, "DaemonSet")["volumes"] if "hostPath" in v)
    volume["hostPath"]["path"] = "/var/lib"
    assert policy.check(objects) == [
        f"DaemonSet/podserve-node-cache: volume {volume['name']!r}: hostPath /var/lib (only "
        "the node cache /var/lib/podserve may be mounted from the node)"
    ]


def test_server_must_mount_the_node_cache_read_only(node_cache: list[Obj]) -> None:
    objects = copy.deepcopy(node_cache)
    container = pod_of(objects, "Deployment")["containers"][0]
    container["volumeMounts"].append({"name": "node-cache", "mountPath": "/var/lib/podserve"})
    assert policy.check(objects) == [
        "Deployment/podserve: container 'podserve': the node cache must be mounted readOnly"
    ]


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c["securityContext"]["capabilities"]["add"].append("DAC_OVERRIDE"),
        lambda c: c.update(command=["sh", "-c", "chown -R 10001 /var/lib/podserve"]),
        lambda c: c.update(name="prepare-more"),
    ],
    ids=["more-capabilities", "other-command", "other-name"],
)
def test_the_root_exception_is_exactly_the_chown(
    node_cache: list[Obj], change: Callable[[Obj], None]
) -> None:
    objects = copy.deepcopy(node_cache)
    change(pod_of(objects, "DaemonSet")["initContainers"][0])
    problems = policy.check(objects)
    assert len(problems) == 1
    assert problems[0].endswith("runAsNonRoot must be true")
