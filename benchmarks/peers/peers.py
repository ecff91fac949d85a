"""The peers: how each one is installed (its own virtualenv) and started.

A :class:`Peer` turns (intra-op threads, batching on/off, port) into a command line, an
environment and, for MLServer and podserve, a model directory written under the scratch
folder. Every server runs in its own process group so that :mod:`procs` can stop it and
everything it spawned (Triton's ``tritonserver`` and stubs, MLServer's workers).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

SERVERS = Path(__file__).resolve().parent / "servers"
REPO = Path(__file__).resolve().parents[2]
# The same onnxruntime everywhere: the one podserve's own venv has.
_ORT = "onnxruntime=={ort}"

# Packages per peer venv. Nothing here needs torch; MLServer 1.7.1's workers die with
# uvloop 0.23, hence the pin.
REQUIREMENTS: dict[str, list[str]] = {
    "triton": ["nvidia-pytriton==0.7.0", _ORT],
    "mlserver": ["mlserver==1.7.1", "uvloop<0.22", _ORT],
    "kserve": ["kserve==0.21.0", _ORT],
    "fastapi": ["fastapi==0.115.14", "uvicorn[standard]==0.54.0", _ORT],
}
# The package whose version names the peer in the table.
VERSION_OF = {
    "triton": "nvidia-pytriton",
    "mlserver": "mlserver",
    "kserve": "kserve",
    "fastapi": "fastapi",
    "podserve": "podserve",
}
# Peers without an in-process dynamic batcher run with batching off only.
HAS_BATCHER = {
    "podserve": True,
    "triton": True,
    "mlserver": True,
    "kserve": False,
    "fastapi": False,
}


def base_python() -> Path:
    """The interpreter the venvs are made from: the one under podserve's own venv."""
    exe = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return exe if exe.exists() else Path(sys.executable)


def libpython_dir() -> str:
    """Where this interpreter's libpython lives (Triton's Python backend must load it)."""
    return str(sysconfig.get_config_var("LIBDIR") or Path(sys.base_prefix) / "lib")


def ensure_venv(scratch: Path, peer: str, fresh: bool, log: Path) -> Path:
    """Create or reuse ``scratch/venv-<peer>``; a stamp file records what was installed."""
    import onnxruntime

    venv = scratch / f"venv-{peer}"
    reqs = [r.format(ort=onnxruntime.__version__) for r in REQUIREMENTS[peer]]
    stamp = venv / "peers-requirements.json"
    if fresh and venv.exists():
        shutil.rmtree(venv)
    if stamp.exists() and json.loads(stamp.read_text()) == reqs:
        return venv
    if not (venv / "bin" / "python").exists():
        subprocess.run([str(base_python()), "-m", "venv", str(venv)], check=True)
    with log.open("ab") as out:
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", *reqs],
            check=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    stamp.write_text(json.dumps(reqs))
    return venv


def package_version(python: Path, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return done.stdout.strip() or "?"


@dataclass
class Launch:
    """What :mod:`procs` starts: argv, environment, and the port to poll."""

    argv: list[str]
    env: dict[str, str]
    port: int
    cwd: Path | None = None
    ports_used: int = 3
    notes: list[str] = field(default_factory=list)


@dataclass
class Setup:
    scratch: Path
    minilm: Path
    podserve: Path  # the podserve executable
    max_batch: int
    delay_ms: float
    policy: str = "adaptive"  # podserve's batching policy when batching is on
    instances: int = 1  # podserve's MiniLM sessions; the intra-op threads are split over them


def _env(setup: Setup, threads: int, batching: bool, extra: dict[str, str] | None = None) -> dict:
    env = dict(os.environ)
    for key in ("VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(key, None)
    env.update(
        PEERS_INTRA_OP=str(threads),
        PEERS_BATCHING="1" if batching else "0",
        PEERS_MAX_BATCH=str(setup.max_batch),
        PEERS_DELAY_MS=str(setup.delay_ms),
        PEERS_MINILM=str(setup.minilm),
        PYTHONPATH=str(SERVERS),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


def launch(peer: str, setup: Setup, threads: int, batching: bool, port: int) -> Launch:
    venv = setup.scratch / f"venv-{peer}"
    py = str(venv / "bin" / "python")
    if peer == "fastapi":
        return Launch(
            [py, str(SERVERS / "fastapi_echo.py"), str(port)], _env(setup, threads, False), port
        )
    if peer == "kserve":
        return Launch(
            [py, str(SERVERS / "kserve_server.py"), str(port)], _env(setup, threads, False), port
        )
    if peer == "triton":
        ld = libpython_dir() + ":" + os.environ.get("LD_LIBRARY_PATH", "")
        env = _env(setup, threads, batching, {"LD_LIBRARY_PATH": ld.rstrip(":")})
        return Launch([py, str(SERVERS / "pytriton_server.py"), str(port)], env, port)
    if peer == "mlserver":
        folder = _mlserver_dir(setup, threads, batching, port)
        argv = [str(venv / "bin" / "mlserver"), "start", str(folder)]
        return Launch(argv, _env(setup, threads, batching), port, cwd=folder)
    if peer == "podserve":
        root = stage_podserve(setup, threads)
        argv = [str(setup.podserve), "serve", str(root), "--host", "127.0.0.1"]
        argv += ["--http-port", str(port), "--grpc-port", "0", "--log-level", "WARNING"]
        if batching:
            argv += ["--max-batch-size", str(setup.max_batch)]
            argv += ["--max-queue-delay-ms", str(setup.delay_ms)]
            argv += ["--batching-policy", setup.policy]
        else:
            argv += ["--max-batch-size", "1", "--max-queue-delay-ms", "0"]
        # This checkout's podserve, whatever the venv's install points at.
        env = _env(
            setup,
            threads,
            batching,
            {
                "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{SERVERS}",
                # The identity model's model.py is written by this harness, not a volume.
                "PODSERVE_ALLOW_VOLUME_CODE": "yes",
            },
        )
        return Launch(argv, env, port, ports_used=1)
    raise ValueError(peer)


def _mlserver_dir(setup: Setup, threads: int, batching: bool, port: int) -> Path:
    folder = setup.scratch / "mlserver" / f"t{threads}-{'on' if batching else 'off'}"
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "http_port": port,
        "grpc_port": port + 1,
        "metrics_port": port + 2,
        "host": "127.0.0.1",
        "debug": False,
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    for name, impl in (("identity", "Identity"), ("minilm", "MiniLM")):
        model = {"name": name, "implementation": f"mlserver_models.{impl}"}
        if batching:
            model |= {"max_batch_size": setup.max_batch, "max_batch_time": setup.delay_ms / 1000}
        (folder / name).mkdir(exist_ok=True)
        (folder / name / "model-settings.json").write_text(json.dumps(model, indent=2))
    return folder


def stage_podserve(setup: Setup, threads: int) -> Path:
    """A podserve model root per thread count, written once by ``podserve stage``."""
    root = setup.scratch / "podserve" / f"root-t{threads}"
    stamp = root / ".peers-staged"
    want = f"{setup.minilm} threads={threads} max_batch={setup.max_batch} x{setup.instances} warm"
    if stamp.exists() and stamp.read_text() == want:
        return root
    shutil.rmtree(root, ignore_errors=True)
    src = setup.scratch / "podserve" / "identity-src"
    src.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SERVERS / "podserve_identity.py", src / "model.py")
    stage = [str(setup.podserve), "stage"]
    mb = ["--max-batch-size", str(setup.max_batch)]
    # MiniLM's token axis is variable: the warm-up (and the batch curve the adaptive policy
    # learns from it) runs on the benchmark's own request, not on one token.
    body = json.loads((setup.scratch / "bodies" / "minilm.json").read_text())
    base = root.parent / f"minilm-t{threads}.yaml"
    base.write_text(json.dumps({"warmup": {t["name"]: t["data"] for t in body["inputs"]}}))
    subprocess.run(
        [
            *stage,
            str(src),
            str(root / "identity" / "1"),
            "--runtime",
            "python",
            *mb,
            "--input",
            "x:FP32:384",
            "--output",
            "y:FP32:384",
            "--option",
            "module=model.py:Identity",
        ],
        check=True,
        capture_output=True,
    )
    ins = [
        a
        for n in ("input_ids", "attention_mask", "token_type_ids")
        for a in ("--input", f"{n}:INT64:-1")
    ]
    subprocess.run(
        [
            *stage,
            str(setup.minilm),
            str(root / "minilm" / "1"),
            "--manifest",
            str(base),
            "--runtime",
            "onnx",
            *mb,
            *ins,
            "--output",
            "last_hidden_state:FP32:-1,384",
            "--option",
            f"intra_op_threads={max(1, threads // setup.instances)}",
            "--option",
            f"instances={setup.instances}",
            "--option",
            "inter_op_threads=1",
        ],
        check=True,
        capture_output=True,
    )
    stamp.write_text(want)
    return root
