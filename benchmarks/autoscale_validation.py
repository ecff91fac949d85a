"""Does `podserve plan`'s simulation match real `podserve worker`s scaled by the same rules?

Runs real ``podserve worker`` processes against the real RabbitMQ on 127.0.0.1:5672 and
scales them with the planner's own KEDA and HPA rules (podserve.autoscale.control) at short
intervals. The model they serve is a ``python``-runtime model staged with
``podserve.storage.staging.stage_model`` that sleeps a fixed time per batch (100 ms per batch of
up to 8 by default): a cheap model with a stable, known per-batch cost, so that the timeline
means something on 2 shared cores. Everything else is the real path: the worker's quorum queue
and DLX (declared through ``podserve.protocol.queue.topology``), v2 request bodies with the
``model`` header, the dynamic batcher, replies published with confirms before the ack, the
SIGTERM drain. Two runs:

1. calibrate: one worker process is started on a backlog; process start → first reply is its
   measured cold start, and the drain rate after it its measured throughput. These are the
   two numbers the simulator gets (as ``podserve plan`` gets them from benchmarks/results);
2. scale: a backlog at t=0, KEDA polling and HPA sync every second, worker processes started
   and SIGTERMed as the rules say; the measured drain time, replica timeline and
   replica-seconds are compared with ``simulate()`` on the same backlog.

The consumer is a command template (``{root}``, ``{queue}`` and ``{amqp_url}`` are filled in);
the default is ``python -m podserve worker {root} --queue {queue} …``.

    python benchmarks/autoscale_validation.py [--backlog 1200] [--batch-ms 100] [--consumer CMD]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aio_pika
import numpy as np

from podserve.autoscale.control import Hpa, KedaLoop
from podserve.autoscale.keda import Policy, ScalingRules, ScalingSettings
from podserve.autoscale.measurements import ReplicaModel
from podserve.autoscale.simulate import SimResult, simulate
from podserve.autoscale.traces import backlog
from podserve.protocol.queue import topology
from podserve.protocol.queue.client import QueueClient, encode_request
from podserve.storage.staging import stage_model

HERE = Path(__file__).parent
AMQP = os.environ.get("PODSERVE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
MODEL = "sleeper"
WORKER = (
    f"{sys.executable} -m podserve worker {{root}} --queue {{queue}} --amqp-url {{amqp_url}} "
    "--http-port 0 --log-level info"
)

# A model whose cost is a fixed sleep per batch, whatever the batch size: the replica's
# batched rate is max_batch_size / batch_s when the queue is full.
SLEEPER_SOURCE = """
import time


class Sleeper:
    def __init__(self, batch_s=0.1):
        self.batch_s = batch_s

    def infer(self, inputs):
        time.sleep(self.batch_s)
        return {"y": inputs["x"]}
"""


def stage_sleeper(root: Path, batch_ms: float = 200.0, max_batch_size: int = 8) -> Path:
    """Stage the sleeper model as ``root/sleeper/1`` (a real, checksummed model version)."""
    src = root.parent / "sleeper-src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "model.py").write_text(SLEEPER_SOURCE, encoding="utf-8")
    spec = {"datatype": "FP32", "shape": [1]}
    stage_model(
        {"model.py": src / "model.py"},
        root / MODEL / "1",
        {
            "runtime": "python",
            "inputs": [{"name": "x", **spec}],
            "outputs": [{"name": "y", **spec}],
            "max_batch_size": max_batch_size,
            "batching": {"max_queue_delay_ms": 2.0},
            "options": {"module": "model.py:Sleeper", "kwargs": {"batch_s": batch_ms / 1000}},
        },
        overwrite=True,
    )
    return root


@dataclass
class Run:
    """What one real run measured (times in seconds from the end of publishing)."""

    published: int
    first_reply: float | None = None
    last_reply: float | None = None
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (time, replicas)
    end: float = 0.0
    errors: int = 0  # error replies or wrong outputs
    cold_starts: list[float] = field(default_factory=list)  # each replica: start → consuming
    all_ready: tuple[float, int] | None = None  # (time, answered) when every replica consumed
    remaining: list[tuple[float, int]] = field(default_factory=list)  # (time, unanswered)

    def replica_seconds(self) -> float:
        points = [*self.timeline, (self.end, 0)]
        return sum((t1 - t0) * n for (t0, n), (t1, _) in itertools.pairwise(points))


class Consumers:
    """Worker processes, oldest first; scale-down SIGTERMs the newest (like a ReplicaSet).

    Each process logs to a file of its own; the worker's ``consuming queue`` line there is when
    that replica became ready (process start → consuming is its real cold start).
    """

    def __init__(self, command: str, logs: Path) -> None:
        self.command = command
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stopping: list[subprocess.Popen[bytes]] = []
        self.started: dict[int, float] = {}  # pid: start time
        self.log_of: dict[int, Path] = {}
        self.cold_starts: list[float] = []  # start → consuming, each replica that got there
        self._waiting: set[int] = set()
        # A pod leaves the Service at once here: no endpoint-propagation grace to wait out.
        self.env = {**os.environ, "PODSERVE_DRAIN_GRACE_SECONDS": "0"}

    def scale(self, to: int) -> None:
        while len(self.procs) < to:
            log = self.logs / f"worker{len(self.log_of)}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    shlex.split(self.command), stdout=out, stderr=subprocess.STDOUT, env=self.env
                )
            self.procs.append(proc)
            self.started[proc.pid] = time.monotonic()
            self.log_of[proc.pid] = log
            self._waiting.add(proc.pid)
        while len(self.procs) > to:
            proc = self.procs.pop()
            proc.send_signal(signal.SIGTERM)
            self.stopping.append(proc)
            self._waiting.discard(proc.pid)

    def check(self) -> None:
        """Note replicas that started consuming; fail if one exited on its own."""
        for proc in self.procs:
            if proc.poll() is not None:
                tail = self.log_of[proc.pid].read_text(errors="replace")[-3000:]
                raise SystemExit(f"worker {proc.pid} exited {proc.returncode}:\n{tail}")
            if (
                proc.pid in self._waiting
                and b"consuming queue" in self.log_of[proc.pid].read_bytes()
            ):
                self._waiting.discard(proc.pid)
                self.cold_starts.append(time.monotonic() - self.started[proc.pid])

    def close(self) -> None:
        self.scale(0)
        for proc in self.stopping:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def run(
    command: str,
    count: int,
    settings: ScalingSettings | None,
    *,
    root: Path,
    hold: int = 1,
    amqp_url: str = AMQP,
    timeout_s: float = 120.0,
) -> Run:
    """Publish ``count`` requests, then scale by ``settings`` (or hold ``hold`` replicas)."""
    topo = topology.Topology.for_queue(f"autoscale-validation-{uuid.uuid4().hex[:8]}")
    logs = root.parent / topo.queue
    logs.mkdir(parents=True, exist_ok=True)
    consumers = Consumers(command.format(root=root, queue=topo.queue, amqp_url=amqp_url), logs)
    client = QueueClient(amqp_url, topo.queue, topology=topo, connection_name="autoscale-driver")
    try:
        await client.connect()  # declares the worker's quorum queue + DLX + DLQ
        ids = await asyncio.gather(
            *(
                client.publish(MODEL, encode_request({"x": np.array([[i]], np.float32)}))
                for i in range(count)
            )
        )
        result = Run(count)
        start = time.monotonic()
        keda = KedaLoop.for_settings(settings) if settings else None
        hpa = Hpa.for_settings(settings) if settings else None
        if settings is None:
            consumers.scale(hold)
            result.timeline.append((0.0, hold))
        next_poll = next_sync = 1.0  # the backlog landed just after a poll, as in the simulator
        next_sample = 0.0
        seen = 0
        while True:
            now = time.monotonic() - start
            if client.answered != seen:
                seen = client.answered
                result.first_reply = result.first_reply if result.first_reply is not None else now
                result.last_reply = now
            metric = float(count - seen)  # ready + unacked, as KEDA's protocol: http counts
            if now >= next_sample:
                next_sample += 1.0
                result.remaining.append((round(now, 2), count - seen))
            # The controllers see the time of their tick, not of a late wake-up on a busy
            # machine: a 2 s policy window must not slip by one sync because a loop ran late.
            if keda and settings and now >= next_poll:
                tick, next_poll = next_poll, next_poll + settings.polling_interval
                to = keda.poll(tick, len(consumers.procs), metric)
                if to is not None and to != len(consumers.procs):
                    consumers.scale(to)
                    result.timeline.append((round(now, 2), to))
            if hpa and settings and now >= next_sync:
                tick, next_sync = next_sync, next_sync + settings.hpa_sync_s
                to = hpa.sync(tick, len(consumers.procs), metric)
                if to != len(consumers.procs):
                    consumers.scale(to)
                    result.timeline.append((round(now, 2), to))
            drained = seen >= count
            if (drained and (settings is None or not consumers.procs)) or now > timeout_s:
                break
            consumers.check()
            if result.all_ready is None and settings is None and len(consumers.cold_starts) == hold:
                result.all_ready = (now, client.answered)
            await asyncio.sleep(0.02)
        result.end = time.monotonic() - start
        result.cold_starts = [round(c, 2) for c in consumers.cold_starts]
        for i, cid in enumerate(ids):  # every reply is a v2 response with y == x
            reply = await client.result(cid, 5.0)
            ok = reply.error is None and float(reply.outputs()["y"].ravel()[0]) == i
            result.errors += not ok
        return result
    finally:
        consumers.close()
        await client.close()
        connection = await aio_pika.connect(amqp_url)
        try:
            await topology.delete(await connection.channel(), topo)
        finally:
            await connection.close()


def calibrate(command: str, count: int, root: Path, replicas: int = 2) -> dict[str, Any]:
    """``replicas`` workers started together on a backlog: their cold start and drain rate.

    On 2 shared cores a process start is CPU-bound (imports), so a worker started next to
    another one starts slower than alone; the scale run starts two at once (KEDA's 0→1 and the
    HPA's 1→2 in the same second), so the calibration does too. The per-replica rate is the
    drain rate once all of them consume, divided by their number.
    """
    m = asyncio.run(run(command, count, None, root=root, hold=replicas))
    if m.first_reply is None or m.last_reply is None or m.all_ready is None:
        raise SystemExit("calibration: no replies; is the consumer command right?")
    since, answered = m.all_ready
    if count - answered < count // 3 or m.last_reply - since < 1.0:
        raise SystemExit("calibration: the backlog drained before all replicas consumed")
    rate = (count - answered) / (m.last_reply - since) / replicas
    ready = float(np.median(m.cold_starts))
    return {
        "replicas_started_together": replicas,
        "rate_per_replica": rate,
        "ready_s": ready,
        "cold_starts": [round(c, 2) for c in m.cold_starts],
        "first_reply_s": m.first_reply,
        "model": ReplicaModel({1: rate}, ready_s=ready, schedule_s=0.0),
    }


def _rows(real: Run, sim: SimResult) -> dict[str, dict[str, float]]:
    rows = {
        "drain time (s)": (real.last_reply or float("nan"), sim.drained_at),
        "max replicas": (max(n for _, n in real.timeline), int(sim.replicas.max())),
        "replica-seconds": (real.replica_seconds(), sim.replica_seconds),
        "back to zero at (s)": (real.timeline[-1][0], sim.events[-1].time),
    }
    return {k: {"real": r, "sim": s, "error": abs(s - r) / r} for k, (r, s) in rows.items()}


def compare(
    command: str, count: int, settings: ScalingSettings, calibration: dict[str, Any], root: Path
) -> dict[str, Any]:
    """The scale run against ``simulate()`` twice: with the calibrated cold start (the
    prediction), and with the cold start the scale run's own workers showed (the fidelity of
    the KEDA/HPA/drain model once the start-up time is right; on 2 shared cores a CPU-bound
    process start drifts with the other work on the machine between the two runs)."""
    model: ReplicaModel = calibration["model"]
    real = asyncio.run(run(command, count, settings, root=root))
    trace = backlog(count, 1.0, dt=0.05)
    sim = simulate(trace, model, settings, until_idle=True)
    in_situ_ready = float(np.median(real.cold_starts)) if real.cold_starts else model.ready_s
    in_situ = simulate(trace, replace(model, ready_s=in_situ_ready), settings, until_idle=True)
    step = round(1.0 / sim.dt)  # the simulated backlog at the same 1 s marks
    marks = zip(sim.t[step - 1 :: step] + sim.dt, sim.backlog[step - 1 :: step], strict=True)
    return {
        "backlog": count,
        "bad_replies": real.errors,
        "settings": {
            "polling_s": settings.polling_interval,
            "hpa_sync_s": settings.hpa_sync_s,
            "cooldown_s": settings.cooldown_period,
            "target": settings.target,
            "max_replicas": settings.max_replicas,
            "scale_up": "1 pod / 2 s",
            "scale_down_window_s": settings.scale_down.stabilization_window_s,
        },
        "calibrated": {k: v for k, v in calibration.items() if k != "model"},
        "real_cold_starts": real.cold_starts,
        "real_timeline": real.timeline,
        "sim_timeline": [(round(e.time, 2), e.after) for e in sim.events],
        "in_situ_timeline": [(round(e.time, 2), e.after) for e in in_situ.events],
        "real_backlog": real.remaining,
        "sim_backlog": [(round(float(t), 2), round(float(b))) for t, b in marks],
        "rows": _rows(real, sim),
        "in_situ_ready_s": in_situ_ready,
        "in_situ_rows": _rows(real, in_situ),
    }


def validation_settings(max_replicas: int = 4, target: float = 100.0) -> ScalingSettings:
    return ScalingSettings(
        min_replicas=0,
        max_replicas=max_replicas,
        target=target,
        polling_interval=1,
        cooldown_period=5,
        hpa_sync_s=1.0,
        scale_up=ScalingRules(0, (Policy("Pods", 1, 2),)),  # a staircase worth comparing
        scale_down=ScalingRules(5, (Policy("Percent", 100, 15),)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=1200)
    parser.add_argument("--calibration-backlog", type=int, default=400)
    parser.add_argument("--batch-ms", type=float, default=200.0, help="the model's batch time")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--consumer", default=WORKER, help="{root} {queue} {amqp_url} filled in")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="podserve-autoscale-"))
    root = stage_sleeper(scratch / "models", args.batch_ms, args.max_batch_size)
    calibration = calibrate(args.consumer, args.calibration_backlog, root)
    report = compare(args.consumer, args.backlog, validation_settings(), calibration, root)
    report["consumer"] = "podserve worker" if args.consumer == WORKER else args.consumer
    report["model"] = (
        f"python runtime, sleeps {args.batch_ms:g} ms per batch of up to {args.max_batch_size}"
    )
    report["command"] = " ".join(["python", "benchmarks/autoscale_validation.py", *sys.argv[1:]])
    out = HERE / "results" / "autoscale_validation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    cal = report["calibrated"]
    print(
        f"calibrated ({cal['replicas_started_together']} workers started together): "
        f"{cal['rate_per_replica']:.1f} msg/s per replica, start → consuming "
        f"{cal['cold_starts']} s (median {cal['ready_s']:.2f} s), first reply "
        f"{cal['first_reply_s']:.2f} s"
    )
    print(f"real replicas: {report['real_timeline']}")
    print(f"sim replicas:  {report['sim_timeline']}")
    print(f"real cold starts (start → consuming): {report['real_cold_starts']}")
    print(f"bad replies: {report['bad_replies']}; logs under {scratch}")
    print(
        f"in situ (the scale run's median cold start {report['in_situ_ready_s']:.2f} s): "
        f"{report['in_situ_timeline']}"
    )
    print("\n| quantity | real | simulated (calibrated) | error | simulated (in situ) | error |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in report["rows"].items():
        situ = report["in_situ_rows"][name]
        print(
            f"| {name} | {row['real']:.2f} | {row['sim']:.2f} | {row['error']:.0%} "
            f"| {situ['sim']:.2f} | {situ['error']:.0%} |"
        )


if __name__ == "__main__":
    main()
