"""The deployment rules podserve's design depends on, checked on rendered manifests.

Schema validation says a manifest is well-formed; these rules say it runs podserve the way
the design needs: probes on the health endpoints of the server's own route table, the model
volume read-only, non-root with a read-only root filesystem (scratch on a writable /tmp), a
grace period that covers the drain, and a KEDA ScaledObject that scales the worker which
consumes the queue it measures, over the management API. :func:`check` returns every
violation as a sentence, so ``podserve render`` and the tests report all of them at once.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from typing import Any

from podserve.errors import PodserveError
from podserve.protocol.http import routes
from podserve.settings import STOP_MARGIN_SECONDS, Settings, worst_case_stop_seconds

Obj = Mapping[str, Any]

SCRATCH_PATH = "/tmp"  # noqa: S108 - the pod's emptyDir, the only writable path
# The node cache (deploy/components/node-cache): the one hostPath podserve mounts. Servers
# mount it read-only; only init containers (pull, prepull) and the DaemonSet write to it.
NODE_CACHE_PATH = "/var/lib/podserve"
# The one container allowed to run as root: the DaemonSet's ``prepare``, which only chowns
# the node cache directory to the server's uid, with CHOWN as its only capability.
ROOT_EXCEPTION = ("DaemonSet", "prepare", ["chown", "10001:10001", NODE_CACHE_PATH])
# Which endpoint of the HTTP server (protocol/http/routes.py) each probe must reach.
PROBE_ENDPOINTS = {
    "startupProbe": routes.READY,
    "readinessProbe": routes.READY,
    "livenessProbe": routes.LIVE,
}


def endpoint_of(path: str) -> str | None:
    """The HTTP server's endpoint for a GET of this path, from its own route table."""
    try:
        return routes.match("GET", path)[0]
    except PodserveError:  # RouteError: 404 or 405
        return None


def check(objects: Iterable[Obj]) -> list[str]:
    """Every policy violation in a manifest set (empty when it complies)."""
    objs = list(objects)
    problems: list[str] = []
    config_maps = {
        o["metadata"]["name"]: o.get("data", {}) for o in objs if o["kind"] == "ConfigMap"
    }
    for obj in objs:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in ("Deployment", "Job", "DaemonSet"):
            pod = obj["spec"]["template"]["spec"]
            problems += [f"{where}: {p}" for p in _check_pod(pod, obj["kind"], config_maps)]
        elif obj["kind"] == "LeaderWorkerSet":
            # The leader serves (checked like a Deployment's pod: probes, grace, read-only
            # model root); the workers serve nothing but read the same volume, read-only.
            template = obj["spec"]["leaderWorkerTemplate"]
            for role, kind in (("leaderTemplate", "Deployment"), ("workerTemplate", "Worker")):
                pod = template.get(role, template.get("workerTemplate"))["spec"]
                problems += [f"{where}: {role}: {p}" for p in _check_pod(pod, kind, config_maps)]
        elif obj["kind"] == "ScaledObject":
            problems += [f"{where}: {p}" for p in _check_scaled_object(obj, objs, config_maps)]
    return problems


def container_env(container: Obj, config_maps: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The literal environment a container gets from its ConfigMaps and `env` values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            env.update(config_maps.get(ref["name"], {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
    return env


def worker_queue(container: Obj, config_maps: Mapping[str, Mapping[str, str]]) -> str | None:
    """The queue a `podserve worker` container consumes: --queue, else PODSERVE_QUEUE."""
    argv = [*container.get("command", []), *container.get("args", [])]
    for i, arg in enumerate(argv):
        if arg == "--queue" and i + 1 < len(argv):
            return str(argv[i + 1])
        if arg.startswith("--queue="):
            return str(arg.split("=", 1)[1])
    return container_env(container, config_maps).get("PODSERVE_QUEUE")


def is_worker(container: Obj) -> bool:
    argv = [*container.get("command", []), *container.get("args", [])]
    return "worker" in argv[:2]


def _check_pod(pod: Obj, kind: str, config_maps: Mapping[str, Mapping[str, str]]) -> list[str]:
    problems: list[str] = []
    pod_sc = pod.get("securityContext", {})
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for volume in volumes.values():
        claim = volume.get("persistentVolumeClaim")
        if kind in ("Deployment", "Worker") and claim is not None and not claim.get("readOnly"):
            problems.append(f"volume {volume['name']!r}: a served claim must be readOnly: true")
        host = volume.get("hostPath")
        if host is not None and not _under(host.get("path", ""), NODE_CACHE_PATH):
            problems.append(
                f"volume {volume['name']!r}: hostPath {host.get('path')} (only the node cache "
                f"{NODE_CACHE_PATH} may be mounted from the node)"
            )
    init = [(c, True) for c in pod.get("initContainers", [])]
    for container, is_init in [*init, *[(c, False) for c in pod["containers"]]]:
        name = f"container {container['name']!r}"
        sc = container.get("securityContext", {})
        if _root_exception(kind, container, is_init):
            pass  # checked to the letter by _root_exception
        elif sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot must be true")
        elif sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{name}: runs as uid 0")
        if kind == "Deployment" and not is_init:
            for mount in container.get("volumeMounts", []):
                if "hostPath" in volumes.get(mount["name"], {}) and not mount.get("readOnly"):
                    problems.append(f"{name}: the node cache must be mounted readOnly")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        env = container_env(container, config_maps)
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
        tmp = mounts.get(SCRATCH_PATH)
        if tmp is None or "emptyDir" not in volumes.get(tmp["name"], {}):
            problems.append(f"{name}: needs a writable emptyDir at {SCRATCH_PATH}")
        if kind in ("Deployment", "Worker") and not is_init:
            root = env.get("PODSERVE_MODEL_ROOT", str(Settings.model_fields["model_root"].default))
            model = mounts.get(root)
            if model is None:
                problems.append(f"{name}: the model root {root} is not mounted")
            elif model.get("readOnly") is not True:
                problems.append(f"{name}: the model root {root} must be mounted readOnly")
        if kind == "Deployment" and not is_init:
            problems += [f"{name}: {p}" for p in _check_probes(container, env)]
            problems += [f"{name}: {p}" for p in _check_grace(pod, container, env)]
    return problems


def _under(path: str, base: str) -> bool:
    parts = [p for p in path.split("/") if p]
    return ".." not in parts and "/" + "/".join(parts[: len(base.split("/")) - 1]) == base


def _root_exception(kind: str, container: Obj, is_init: bool) -> bool:
    """The DaemonSet's ``prepare`` init container, exactly as components/node-cache has it."""
    want_kind, want_name, want_command = ROOT_EXCEPTION
    sc = container.get("securityContext", {})
    caps = sc.get("capabilities", {})
    return (
        kind == want_kind
        and is_init
        and container["name"] == want_name
        and [*container.get("command", []), *container.get("args", [])] == want_command
        and caps.get("drop") == ["ALL"]
        and caps.get("add") == ["CHOWN"]
        and sc.get("privileged") in (None, False)
    )


def _check_probes(container: Obj, env: Mapping[str, str]) -> list[str]:
    problems: list[str] = []
    http_port = int(env.get("PODSERVE_HTTP_PORT", Settings.model_fields["http_port"].default))
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    for probe_name, endpoint in PROBE_ENDPOINTS.items():
        probe = container.get(probe_name)
        if probe is None or "httpGet" not in probe:
            problems.append(f"{probe_name} missing (an httpGet on the {endpoint} endpoint)")
            continue
        get = probe["httpGet"]
        found = endpoint_of(str(get.get("path", "")))
        if found is None:
            problems.append(f"{probe_name} path {get.get('path')!r} is not a server route")
        elif found != endpoint:
            problems.append(f"{probe_name} must probe the {endpoint} endpoint, not {found}")
        port = ports.get(get["port"]) if isinstance(get["port"], str) else get["port"]
        if port != http_port:
            problems.append(f"{probe_name} port {get['port']!r} is not the HTTP port {http_port}")
    return problems


def _check_grace(pod: Obj, container: Obj, env: Mapping[str, str]) -> list[str]:
    fields = Settings.model_fields
    drain = float(
        env.get("PODSERVE_DRAIN_TIMEOUT_SECONDS", fields["drain_timeout_seconds"].default)
    )
    grace = float(env.get("PODSERVE_DRAIN_GRACE_SECONDS", fields["drain_grace_seconds"].default))
    pre_stop = _pre_stop_seconds(container)
    needed = worst_case_stop_seconds(pre_stop=pre_stop, grace=grace, drain_timeout=drain)
    period = pod.get("terminationGracePeriodSeconds", 30)
    if period < needed:
        return [
            f"terminationGracePeriodSeconds {period} must be at least preStop {pre_stop:g} + "
            f"drain grace {grace:g} + drain timeout {drain:g} + stop margin "
            f"{STOP_MARGIN_SECONDS:g} = {needed:g} s (the kubelet kills the pod at the period's "
            "end, mid-drain)"
        ]
    return []


def _pre_stop_seconds(container: Obj) -> float:
    handler = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in handler:
        return float(handler["sleep"]["seconds"])
    command = handler.get("exec", {}).get("command", [])
    if len(command) == 1:
        command = shlex.split(command[0])
    if len(command) == 2 and command[0].rsplit("/", 1)[-1] == "sleep":
        return float(command[1])
    return 0.0


def _check_scaled_object(
    obj: Obj, objs: list[Obj], config_maps: Mapping[str, Mapping[str, str]]
) -> list[str]:
    spec = obj["spec"]
    target = spec["scaleTargetRef"]
    if target.get("kind", "Deployment") != "Deployment":
        return [f"scaleTargetRef kind {target.get('kind')!r} is not a Deployment"]
    deployments = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}
    deployment = deployments.get(target["name"])
    if deployment is None:
        return [f"scaleTargetRef names {target['name']!r}, which is not in the manifest set"]
    workers = [c for c in deployment["spec"]["template"]["spec"]["containers"] if is_worker(c)]
    if not workers:
        return [f"scaleTargetRef {target['name']!r} runs no `podserve worker` container"]
    queues = {worker_queue(c, config_maps) for c in workers}
    auths = {o["metadata"]["name"] for o in objs if o["kind"] == "TriggerAuthentication"}
    problems: list[str] = []
    triggers = [t for t in spec.get("triggers", []) if t["type"] == "rabbitmq"]
    if not triggers:
        problems.append("no rabbitmq trigger")
    for trigger in triggers:
        meta = trigger.get("metadata", {})
        if meta.get("queueName") not in queues:
            problems.append(
                f"trigger queueName {meta.get('queueName')!r} is not the queue the worker "
                f"consumes ({', '.join(sorted(str(q) for q in queues))})"
            )
        if meta.get("protocol") != "http":
            problems.append(
                "rabbitmq trigger must use protocol: http (the management API counts "
                "unacknowledged messages; amqp does not and scales to zero mid-batch)"
            )
        ref = trigger.get("authenticationRef", {}).get("name")
        if ref is not None and ref not in auths:
            problems.append(f"authenticationRef {ref!r} is not in the manifest set")
    return problems
