"""Build the podserve image, then run and test it the way deploy/base runs it.

    python tests/image/image_check.py engine        # prints docker or podman, or exits 1
    python tests/image/image_check.py build [--image podserve:dev] [--target cpu]
    python tests/image/image_check.py test  [--image podserve:dev] [--target cpu] [--json F]

``make image`` and ``make image-test`` call it. Engine-agnostic: docker or podman, whichever
``CONTAINER_ENGINE`` names or is found on PATH. ``IMAGE_BUILD_FLAGS`` adds build flags
(shell-quoted: secrets, build contexts, volumes) and ``BASE_IMAGE`` replaces the Python base
image (build arg ``PYTHON_IMAGE``). ``build`` needs only the standard library.

``test`` builds, then checks: the image runs as uid 10001 and holds no weights, and no build
setting (pip.conf, CA bundle) reached a layer; the container, run as the Deployment runs it
(read-only root, uid 10001, no capabilities, no-new-privileges, /tmp a tmpfs, the MiniLM demo
staged on the host and mounted read-only, settings from deploy/base/podserve.env), becomes
ready, answers the README's curl and tritonclient.grpc, and exits 0 on SIGTERM within the
grace period; with podman, ``kube play`` of ``kubectl kustomize deploy/base`` (one replica,
the PVC replaced by a hostPath in a temporary overlay) becomes ready too.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BASE_DIR = REPO / "deploy" / "base"
UID = "10001"
READY_TIMEOUT_S = 180.0
WEIGHT_SUFFIXES = ("safetensors", "bin", "pt", "pth", "onnx", "gguf", "ckpt", "h5")
# Build-time settings that must never be in a layer: compared with the base image's copies.
BUILD_ONLY_FILES = ("/etc/pip.conf", "/etc/ssl/certs/ca-certificates.crt")
SENTENCE = "Kubernetes runs my model"


class CheckFailed(Exception):
    """One line saying what the image did wrong."""


def engine() -> str:
    """CONTAINER_ENGINE, else the first of docker and podman that answers ``info``."""
    wanted = os.environ.get("CONTAINER_ENGINE", "").strip()
    for name in [wanted] if wanted else ["docker", "podman"]:
        if shutil.which(name):
            try:
                done = subprocess.run([name, "info"], capture_output=True, timeout=60, check=False)
            except subprocess.TimeoutExpired:
                continue
            if done.returncode == 0:
                return name
    raise CheckFailed(f"no working container engine ({wanted or 'docker or podman'}: `info` fails)")


def sh(*cmd: str, check: bool = True, timeout: float = 600) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise CheckFailed(f"{shlex.join(cmd)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()


def build(image: str, target: str) -> float:
    eng = engine()
    cmd = [eng, "build", "--target", target, "-t", image]
    cmd += shlex.split(os.environ.get("IMAGE_BUILD_FLAGS", ""))
    if base := os.environ.get("BASE_IMAGE", "").strip():
        cmd += ["--build-arg", f"PYTHON_IMAGE={base}"]
    cmd.append(str(REPO))
    print("image:", shlex.join(cmd), flush=True)
    env = dict(os.environ, DOCKER_BUILDKIT="1")  # RUN --mount needs BuildKit
    started = time.monotonic()
    subprocess.run(cmd, check=True, env=env)
    seconds = time.monotonic() - started
    print(f"image: built {image} ({target}) in {seconds:.1f} s", flush=True)
    return seconds


def image_size_mb(eng: str, image: str) -> float:
    return int(sh(eng, "image", "inspect", "--format", "{{.Size}}", image)) / 1e6


def in_image(eng: str, image: str, script: str, user: str = "0") -> str:
    cmd = [eng, "run", "--rm", "--network", "none", "--user", user, "--entrypoint", "sh"]
    return sh(*cmd, image, "-c", script)


# Every serving runtime and source imports in the image (the lean CPU image leaves out
# packages that serving never imports; this is what would notice one that it does).
SERVING_IMPORTS = {
    "cpu": "torch onnxruntime tokenizers s3fs podserve.runtime.torch podserve.runtime.onnx "
    "podserve.runtime.transformers podserve.runtime.architectures podserve.storage.sources.s3 "
    "podserve.protocol.queue",
    "full": "transformers",
}


def check_static(eng: str, image: str, target: str) -> None:
    user = sh(eng, "image", "inspect", "--format", "{{.Config.User}}", image)
    if user.split(":")[0] != UID:
        raise CheckFailed(f"image user is {user!r}, not {UID}")
    modules = SERVING_IMPORTS["cpu"].split() + SERVING_IMPORTS.get(target, "").split()
    script = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]"
    in_image(eng, image, f"python -c '{script}' {' '.join(modules)}", user=UID)
    names = " -o ".join(f"-name '*.{s}'" for s in WEIGHT_SUFFIXES)
    big = in_image(eng, image, f"find / -xdev -type f \\( {names} \\) -size +1M 2>/dev/null")
    if big:
        raise CheckFailed(f"weights in the image: {big.splitlines()[:5]}")
    # An empty file is a bind mount's mount point (podman build -v), not a setting.
    probe = "; ".join(f"test -s {p} && sha256sum {p} || echo none {p}" for p in BUILD_ONLY_FILES)
    built = in_image(eng, image, probe)
    base_image = os.environ.get("BASE_IMAGE", "").strip() or base_from_dockerfile()
    if sh(eng, "image", "inspect", base_image, check=False):
        expected = in_image(eng, base_image, probe)
        if built != expected:
            raise CheckFailed(f"build settings reached the image: {built} != base {expected}")
    else:
        print(f"image: base {base_image} not local; build-setting check skipped")


def base_from_dockerfile() -> str:
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("ARG PYTHON_IMAGE="):
            return line.split("=", 1)[1].strip()
    raise CheckFailed("Dockerfile has no ARG PYTHON_IMAGE")


def stage_models(root: Path) -> None:
    from podserve.demo import stage_demo

    stage_demo(root)
    for path in [root, *root.rglob("*")]:  # readable by uid 10001, whatever the umask
        path.chmod(0o755 if path.is_dir() else 0o644)


def env_file_settings() -> list[str]:
    return [
        line.strip()
        for line in (BASE_DIR / "podserve.env").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def deployment() -> dict[str, Any]:
    import yaml

    return dict(yaml.safe_load((BASE_DIR / "deployment.yaml").read_text()))


def wait_ready(url: str, timeout: float, alive: Any) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        if not alive():
            raise CheckFailed("the container exited before it was ready")
        time.sleep(0.5)
    raise CheckFailed(f"{url} not ready within {timeout:.0f} s")


def check_embedding(data: list[float], how: str) -> None:
    norm = sum(x * x for x in data) ** 0.5
    if len(data) != 384 or abs(norm - 1.0) > 1e-3:
        raise CheckFailed(f"{how}: expected a normalised 384-d embedding, got {len(data)} values")


def curl_infer(http: str) -> list[float]:
    # The README's command, with the mapped port.
    body = '{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["' + SENTENCE + '"]}]}'
    out = sh("curl", "-sS", "--fail-with-body", f"{http}/v2/models/minilm/infer", "-d", body)
    reply = json.loads(out)
    data = [float(x) for x in reply["outputs"][0]["data"]]
    check_embedding(data, "curl")
    return data


def grpc_infer(grpc: str) -> list[float]:
    import numpy as np
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(grpc)
    try:
        text = triton.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([SENTENCE.encode()], dtype=object))
        result = client.infer("minilm", [text])
        data = [float(x) for x in result.as_numpy("embedding").reshape(-1)]
    finally:
        client.close()
    check_embedding(data, "tritonclient.grpc")
    return data


def run_like_deployment(eng: str, image: str, root: Path, report: dict[str, Any]) -> None:
    spec = deployment()["spec"]["template"]["spec"]
    grace = float(spec["terminationGracePeriodSeconds"])
    name = f"podserve-image-test-{os.getpid()}"
    cmd = [eng, "run", "-d", "--name", name, "--read-only", "--user", f"{UID}:{UID}"]
    cmd += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    cmd += ["--tmpfs", "/tmp:rw,nosuid,nodev,size=1g", "-v", f"{root}:/mnt/models:ro"]
    for setting in env_file_settings():
        cmd += ["-e", setting]
    cmd += ["-p", "127.0.0.1::8080", "-p", "127.0.0.1::8081", image]
    cmd += spec["containers"][0]["args"]
    started = time.monotonic()
    sh(*cmd)
    try:

        def alive() -> bool:
            return sh(eng, "inspect", "--format", "{{.State.Running}}", name) == "true"

        http = "http://" + sh(eng, "port", name, "8080/tcp").splitlines()[0]
        grpc = sh(eng, "port", name, "8081/tcp").splitlines()[0]
        wait_ready(f"{http}/v2/health/ready", READY_TIMEOUT_S, alive)
        report["ready_s"] = round(time.monotonic() - started, 1)
        print(f"image: ready {report['ready_s']} s after `{eng} run`", flush=True)
        via_curl = curl_infer(http)
        via_grpc = grpc_infer(grpc)
        if max(abs(a - b) for a, b in zip(via_curl, via_grpc, strict=True)) > 1e-4:
            raise CheckFailed("curl and tritonclient.grpc got different embeddings")
        print("image: README curl and tritonclient.grpc answered the same embedding")
        sh(eng, "kill", "--signal", "TERM", name)
        stopping = time.monotonic()
        code = sh(eng, "wait", name, timeout=grace + 10)
        report["sigterm_exit_s"] = round(time.monotonic() - stopping, 1)
        if code != "0" or report["sigterm_exit_s"] > grace:
            logs = sh(eng, "logs", "--tail", "20", name, check=False)
            raise CheckFailed(f"SIGTERM: exit {code} after {report['sigterm_exit_s']} s\n{logs}")
        print(f"image: SIGTERM -> exit 0 in {report['sigterm_exit_s']} s (grace {grace:.0f} s)")
    except BaseException:
        print(sh(eng, "logs", "--tail", "40", name, check=False), file=sys.stderr)
        raise
    finally:
        sh(eng, "rm", "-f", name, check=False)


def kube_manifests(image: str, root: Path, work: Path) -> Path:
    """deploy/base through a temporary overlay: one replica, a hostPath for the PVC."""
    import yaml

    name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(BASE_DIR, work)],
        "replicas": [{"name": "podserve", "count": 1}],
        "images": [{"name": "ghcr.io/podserve/podserve", "newName": name, "newTag": tag}],
        "patches": [
            {
                "target": {"kind": "Deployment", "name": "podserve"},
                "patch": yaml.safe_dump(
                    [
                        {
                            "op": "replace",
                            "path": "/spec/template/spec/volumes/0",
                            "value": {
                                "name": "models",
                                "hostPath": {"path": str(root), "type": "Directory"},
                            },
                        }
                    ]
                ),
            }
        ],
    }
    (work / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    rendered = sh("kubectl", "kustomize", str(work))
    # Only what a pod needs: kube play has no Service load balancer, PVC or PDB to give.
    kinds = ("ConfigMap", "Deployment")
    docs = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in kinds]
    volume = docs[-1]["spec"]["template"]["spec"]["volumes"][0]
    if volume["name"] != "models" or "hostPath" not in volume:
        raise CheckFailed(f"the overlay did not replace the models volume: {volume}")
    out = work / "podserve.yaml"
    out.write_text(yaml.safe_dump_all(docs))
    return out


def kube_play(eng: str, image: str, root: Path, report: dict[str, Any]) -> None:
    if eng != "podman" or not shutil.which("kubectl"):
        print(f"image: kube play skipped ({eng} has none, or no kubectl)")
        report["kube_play"] = "skipped"
        return
    with tempfile.TemporaryDirectory(prefix="podserve-kube-") as tmp:
        manifests = kube_manifests(image, root, Path(tmp))
        started = time.monotonic()
        played = sh(eng, "kube", "play", str(manifests)).splitlines()
        try:
            # It prints "Pod:" and "Container:" headers, each followed by IDs.
            if "Container:" not in played:
                raise CheckFailed(f"kube play started no container: {played}")
            ctr = played[played.index("Container:") + 1].strip()
            probe = (
                "import urllib.request as u;"
                "print(u.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=2).status)"
            )
            while time.monotonic() - started < READY_TIMEOUT_S:
                if sh(eng, "exec", ctr, "python", "-c", probe, check=False) == "200":
                    break
                time.sleep(1)
            else:
                logs = sh(eng, "logs", "--tail", "30", ctr, check=False)
                raise CheckFailed(f"kube play: {ctr} not ready in {READY_TIMEOUT_S:.0f} s\n{logs}")
            user = sh(eng, "exec", ctr, "id", "-u")
            read_only = sh(eng, "inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", ctr)
            if user != UID or read_only != "true":
                raise CheckFailed(f"kube play: uid {user}, read-only root {read_only}")
            report["kube_play_ready_s"] = round(time.monotonic() - started, 1)
            report["kube_play"] = "ready"
            print(f"image: kube play of deploy/base ready in {report['kube_play_ready_s']} s")
        finally:
            sh(eng, "kube", "down", str(manifests), check=False)


def test(image: str, target: str, json_out: Path | None) -> None:
    eng = engine()
    report: dict[str, Any] = {"engine": sh(eng, "--version"), "image": image, "target": target}
    report["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    report["build_s"] = round(build(image, target), 1)
    report["size_mb"] = round(image_size_mb(eng, image), 1)
    print(f"image: {image} is {report['size_mb']} MB", flush=True)
    check_static(eng, image, target)
    print("image: uid 10001, serving modules import, no weights, no build settings in layers")
    with tempfile.TemporaryDirectory(prefix="podserve-models-") as tmp:
        root = Path(tmp)
        stage_models(root)
        run_like_deployment(eng, image, root, report)
        kube_play(eng, image, root, report)
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print("image-test:", json.dumps(report))
    if json_out:
        report["date"] = time.strftime("%Y-%m-%d")
        json_out.write_text(json.dumps(report, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("command", choices=["engine", "build", "test"])
    parser.add_argument("--image", default="podserve:dev")
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args(argv)
    try:
        if args.command == "engine":
            print(engine())
        elif args.command == "build":
            build(args.image, args.target)
        else:
            test(args.image, args.target, args.json)
    except CheckFailed as exc:
        print(f"image-test: FAILED: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"image: {shlex.join(exc.cmd)} exited {exc.returncode}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
