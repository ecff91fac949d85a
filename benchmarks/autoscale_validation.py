"""Does `podserve plan`'s simulation match real consumers scaled by the same rules?

Runs real consumer processes against the real RabbitMQ on 127.0.0.1:5672 and scales them with
the planner's own KEDA and HPA rules (podserve.autoscale.control) at short intervals. Two runs:

1. calibrate: one replica drains a backlog; its time to first reply and its drain rate are
   the measured numbers the simulator gets (as `podserve plan` gets them from benchmarks);
2. scale: a backlog at t=0, KEDA polling and HPA sync every second, processes started and
   SIGTERMed as the rules say; the measured drain time, replica timeline and replica-seconds
   are compared with `simulate()` on the same backlog.

The consumer is a command template (``{queue}`` and ``{amqp_url}`` are filled in). Until
`podserve worker` exists the default is benchmarks/autoscale_standin_consumer.py, a minimal
aio-pika consumer with a fixed batch time: a STAND-IN, not podserve's worker.

    python benchmarks/autoscale_validation.py [--backlog 1200] [--consumer CMD]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shlex
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika

from podserve.autoscale.control import Hpa, KedaLoop
from podserve.autoscale.keda import Policy, ScalingRules, ScalingSettings
from podserve.autoscale.measurements import ReplicaModel
from podserve.autoscale.simulate import simulate
from podserve.autoscale.traces import backlog

HERE = Path(__file__).parent
STANDIN = f"{sys.executable} {HERE / 'autoscale_standin_consumer.py'} --queue {{queue}}"
AMQP = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass
class Run:
    """What one real run measured (times in seconds from the end of publishing)."""

    published: int
    first_reply: float | None = None
    last_reply: float | None = None
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (time, replicas)
    end: float = 0.0

    def replica_seconds(self) -> float:
        points = [*self.timeline, (self.end, 0)]
        return sum((t1 - t0) * n for (t0, n), (t1, _) in itertools.pairwise(points))


class Consumers:
    """Consumer processes, oldest first; scale-down SIGTERMs the newest (like a ReplicaSet)."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stopping: list[subprocess.Popen[bytes]] = []

    def scale(self, to: int) -> None:
        while len(self.procs) < to:
            argv = shlex.split(self.command)
            self.procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL))
        while len(self.procs) > to:
            proc = self.procs.pop()
            proc.send_signal(signal.SIGTERM)
            self.stopping.append(proc)

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
    amqp_url: str = AMQP,
    timeout_s: float = 120.0,
) -> Run:
    """Publish ``count`` requests, then scale by ``settings`` (or hold one replica if None)."""
    queue_name = f"autoscale-validation-{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(amqp_url)
    consumers = Consumers(command.format(queue=queue_name, amqp_url=amqp_url))
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, durable=False)
        replies = await channel.declare_queue(exclusive=True)
        result = Run(count)
        start = [0.0]
        received = [0]

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            received[0] += 1
            now = time.monotonic() - start[0]
            result.first_reply = result.first_reply if result.first_reply is not None else now
            result.last_reply = now
            await message.ack()

        await replies.consume(on_reply)
        for i in range(count):
            body = json.dumps({"id": str(i), "inputs": []}).encode()
            message = aio_pika.Message(body, reply_to=replies.name, correlation_id=str(i))
            await channel.default_exchange.publish(message, routing_key=queue_name)
        start[0] = time.monotonic()
        keda = KedaLoop.for_settings(settings) if settings else None
        hpa = Hpa.for_settings(settings) if settings else None
        if settings is None:
            consumers.scale(1)
            result.timeline.append((0.0, 1))
        next_poll = next_sync = 1.0  # the backlog landed just after a poll, as in the simulator
        while True:
            now = time.monotonic() - start[0]
            metric = float(count - received[0])  # ready + unacked, as protocol: http counts
            if keda and settings and now >= next_poll:
                next_poll += settings.polling_interval
                to = keda.poll(now, len(consumers.procs), metric)
                if to is not None and to != len(consumers.procs):
                    consumers.scale(to)
                    result.timeline.append((round(now, 2), to))
            if hpa and settings and now >= next_sync:
                next_sync += settings.hpa_sync_s
                to = hpa.sync(now, len(consumers.procs), metric)
                if to != len(consumers.procs):
                    consumers.scale(to)
                    result.timeline.append((round(now, 2), to))
            drained = received[0] >= count
            if (drained and (settings is None or not consumers.procs)) or now > timeout_s:
                break
            await asyncio.sleep(0.02)
        result.end = time.monotonic() - start[0]
        await queue.delete(if_unused=False, if_empty=False)
        return result
    finally:
        consumers.close()
        await connection.close()


def calibrate(command: str, count: int) -> ReplicaModel:
    """One replica on a backlog: time to first reply and the drain rate after it."""
    measured = asyncio.run(run(command, count, None))
    if measured.first_reply is None or measured.last_reply is None:
        raise SystemExit("calibration: no replies; is the consumer command right?")
    rate = (count - 1) / max(measured.last_reply - measured.first_reply, 1e-3)
    return ReplicaModel({1: rate}, ready_s=measured.first_reply, schedule_s=0.0)


def compare(
    command: str, count: int, settings: ScalingSettings, model: ReplicaModel
) -> dict[str, Any]:
    real = asyncio.run(run(command, count, settings))
    sim = simulate(backlog(count, 1.0, dt=0.05), model, settings, until_idle=True)
    sim_timeline = [(round(e.time, 2), e.after) for e in sim.events]
    rows = {
        "drain time (s)": (real.last_reply or float("nan"), sim.drained_at),
        "max replicas": (max(n for _, n in real.timeline), int(sim.replicas.max())),
        "replica-seconds": (real.replica_seconds(), sim.replica_seconds),
        "back to zero at (s)": (real.timeline[-1][0], sim_timeline[-1][0]),
    }
    return {
        "backlog": count,
        "settings": {
            "polling_s": settings.polling_interval,
            "hpa_sync_s": settings.hpa_sync_s,
            "cooldown_s": settings.cooldown_period,
            "target": settings.target,
            "max_replicas": settings.max_replicas,
            "scale_up": "1 pod / 2 s",
            "scale_down_window_s": settings.scale_down.stabilization_window_s,
        },
        "calibrated": {"rate_per_replica": model.throughput[1], "ready_s": model.ready_s},
        "real_timeline": real.timeline,
        "sim_timeline": sim_timeline,
        "rows": {k: {"real": r, "sim": s, "error": abs(s - r) / r} for k, (r, s) in rows.items()},
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
    parser.add_argument("--calibration-backlog", type=int, default=300)
    parser.add_argument("--consumer", default=STANDIN, help="command; {queue} is filled in")
    args = parser.parse_args()
    model = calibrate(args.consumer, args.calibration_backlog)
    report = compare(args.consumer, args.backlog, validation_settings(), model)
    report["consumer"] = "stand-in" if args.consumer == STANDIN else args.consumer
    out = HERE / "results" / "autoscale_validation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    cal = report["calibrated"]
    print(
        f"calibrated: {cal['rate_per_replica']:.1f} msg/s per replica, ready {cal['ready_s']:.2f} s"
    )
    print(f"real replicas: {report['real_timeline']}")
    print(f"sim replicas:  {report['sim_timeline']}")
    print("\n| quantity | real | simulated | error |")
    print("|---|---:|---:|---:|")
    for name, row in report["rows"].items():
        print(f"| {name} | {row['real']:.2f} | {row['sim']:.2f} | {row['error']:.0%} |")


if __name__ == "__main__":
    main()
