"""``podserve plan``: simulate KEDA on a trace, or search the cheapest settings for a p99 goal.

Without ``--p99-goal`` it simulates the settings given by the flags; with it, it searches the
grid of :mod:`podserve.autoscale.plan` and prints the cheapest ScaledObject that meets the goal.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from podserve.commands import Subparsers
from podserve.errors import ConfigurationError

RESULTS = Path("benchmarks/results")
_CHECKOUT_RESULTS = Path(__file__).resolve().parents[3] / RESULTS
_DESCRIPTION = (
    "Simulate KEDA and the HorizontalPodAutoscaler scaling the queue worker on a traffic "
    "trace. Without --p99-goal it simulates the ScaledObject settings given by the flags; "
    "with it, it searches a grid of settings and prints the cheapest ScaledObject whose "
    "simulated p99 wait meets the goal. The replica's throughput and start-up time come from "
    "--throughput/--ready-s, or from the benchmark result files (benchmarks/results/ of the "
    "current directory or of this podserve checkout)."
)


def _results_file(*names: str) -> Path | None:
    """The first of ``names`` under ./benchmarks/results, else under this checkout's."""
    for folder in (RESULTS, _CHECKOUT_RESULTS):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "plan",
        help="simulate KEDA autoscaling on a traffic trace and recommend a ScaledObject",
        description=_DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t = p.add_argument_group("traffic")
    t.add_argument("--trace", default="spiky-day", help="spiky-day | step | bursty | FILE.csv")
    t.add_argument("--dt", type=float, default=1.0, help="simulation step, seconds")
    t.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals")
    m = p.add_argument_group("the model's measured numbers (flags win over JSON files)")
    m.add_argument("--throughput", help="per-replica req/s by batch size, e.g. 1:20,8:90,32:150")
    m.add_argument("--ready-s", type=float, help="pod process start to consuming, seconds")
    m.add_argument("--throughput-json", type=Path, help=f"default {RESULTS}/queue.json|serve.json")
    m.add_argument("--cold-start-json", type=Path, help=f"default {RESULTS}/cold_start.json")
    m.add_argument("--model", help="pick this model's records in the JSON files")
    m.add_argument("--schedule-s", type=float, default=5.0, help="pod scheduling delay")
    m.add_argument("--image-pull-s", type=float, default=0.0, help="image pull (0: cached)")
    s = p.add_argument_group("ScaledObject settings (the simulated ones, or the search's base)")
    s.add_argument(
        "--min-replicas", type=int, default=0, help="minReplicaCount (0 = scale to zero)"
    )
    s.add_argument("--max-replicas", type=int, default=20, help="maxReplicaCount")
    s.add_argument("--target", type=float, default=20.0, help="trigger value: messages/replica")
    s.add_argument("--activation", type=float, default=0.0, help="activationValue")
    s.add_argument("--polling-interval", type=int, default=30, help="KEDA pollingInterval, s")
    s.add_argument(
        "--cooldown-period", type=int, default=300, help="KEDA cooldownPeriod (to zero), s"
    )
    s.add_argument("--scale-down-window", type=int, default=300, help="stabilisation, s")
    s.add_argument("--scale-up-window", type=int, default=0, help="stabilisation, s")
    s.add_argument("--hpa-sync-s", type=float, default=15.0, help="HPA controller sync period")
    s.add_argument("--tolerance", type=float, default=0.1, help="HPA tolerance")
    g = p.add_argument_group("search")
    g.add_argument("--p99-goal", type=float, help="search the cheapest settings meeting this p99")
    g.add_argument("--search-targets", type=_floats, default=(), help="default: from throughput")
    g.add_argument(
        "--search-min-replicas", type=_ints, default=(0, 1), help="minReplicaCount values, e.g. 0,1"
    )
    g.add_argument("--search-polling", type=_ints, default=(15,), help="pollingInterval values, s")
    g.add_argument(
        "--search-cooldown", type=_ints, default=(60, 300), help="cooldownPeriod values, s"
    )
    g.add_argument(
        "--search-down-window",
        type=_ints,
        default=(60, 300),
        help="scale-down stabilisation windows, s",
    )
    g.add_argument(
        "--search-activation", type=_floats, default=(0.0,), help="activationValue values"
    )
    o = p.add_argument_group("output")
    o.add_argument("--price-per-hour", type=float, default=1.0, help="cost of one replica-hour")
    o.add_argument("--plot", type=Path, help="write the PNG here")
    o.add_argument("--yaml", type=Path, help="write the ScaledObject here (default: stdout)")
    o.add_argument("--json", action="store_true", help="print the summary as JSON")
    o.add_argument("--name", default="podserve-worker", help="ScaledObject name")
    o.add_argument("--deployment", default="podserve-worker", help="Deployment to scale")
    o.add_argument("--queue", default="podserve-requests", help="RabbitMQ queue name")
    o.add_argument("--auth", default="podserve-rabbitmq", help="TriggerAuthentication name")
    o.add_argument("--secret", default="podserve-rabbitmq", help="Secret with 'management-url'")
    o.add_argument("--host-from-env", help="read the host from this env var, no TriggerAuth")
    p.set_defaults(handler=run)


def _model(args: argparse.Namespace) -> Any:
    from podserve.autoscale import measurements as meas

    if args.throughput:
        throughput = meas.parse_throughput(args.throughput)
    else:
        path = args.throughput_json or _results_file("queue.json", "serve.json")
        if path is None:
            raise ConfigurationError(
                f"no {RESULTS}/queue.json or serve.json here: pass --throughput "
                "(per-replica req/s by batch size, e.g. 1:20,8:90,32:150)"
            )
        throughput = meas.load_throughput(path, args.model)
    if args.ready_s is not None:
        ready = args.ready_s
    else:
        path = args.cold_start_json or _results_file("cold_start.json")
        if path is None or not path.is_file():
            raise ConfigurationError(
                f"no {path or RESULTS / 'cold_start.json'}: pass --ready-s SECONDS"
            )
        ready = meas.load_ready_s(path, args.model)
    return meas.ReplicaModel(throughput, ready, args.schedule_s, args.image_pull_s)


def _settings(args: argparse.Namespace) -> Any:
    from podserve.autoscale import keda

    up, down = keda.DEFAULT_SCALE_UP, keda.DEFAULT_SCALE_DOWN
    return keda.ScalingSettings(
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        target=args.target,
        activation_value=args.activation,
        polling_interval=args.polling_interval,
        cooldown_period=args.cooldown_period,
        scale_up=keda.ScalingRules(args.scale_up_window, up.policies, up.select_policy),
        scale_down=keda.ScalingRules(args.scale_down_window, down.policies, down.select_policy),
        tolerance=args.tolerance,
        hpa_sync_s=args.hpa_sync_s,
    )


def _yaml(args: argparse.Namespace, settings: Any) -> tuple[str, str]:
    """The YAML and a line saying whether it was validated against the CRDs."""
    from podserve.autoscale import keda

    objects = [
        keda.render_scaled_object(
            settings,
            name=args.name,
            deployment=args.deployment,
            queue=args.queue,
            auth_name=args.auth,
            host_from_env=args.host_from_env,
        )
    ]
    if not args.host_from_env:
        objects.append(keda.render_trigger_authentication(args.auth, args.secret))
    try:
        import jsonschema  # noqa: F401  (the dev extra)
    except ImportError:
        note = "not validated against KEDA's CRDs: pip install jsonschema"
    else:
        for obj in objects:
            keda.validate(obj)
        note = "validated against KEDA's CRDs (shipped with podserve)"
    return keda.to_yaml(*objects), note


def run(args: argparse.Namespace) -> int:
    from podserve.autoscale import plan, traces
    from podserve.autoscale.simulate import simulate

    if args.dt <= 0:
        raise ConfigurationError("--dt must be > 0")
    if args.trace in traces.BUILTIN:
        trace = traces.builtin(args.trace, args.dt, args.seed)
    elif Path(args.trace).is_file():
        trace = traces.read_csv(Path(args.trace), args.dt, args.seed)
    else:
        raise ConfigurationError(
            f"unknown trace {args.trace!r}: use a built-in trace ("
            + ", ".join(sorted(traces.BUILTIN))
            + ") or the path of a CSV file of 'seconds,requests per second' rows"
        )
    model = _model(args)
    base = _settings(args)
    base.check()
    out = sys.stdout
    header = (
        f"trace {trace.name}: {trace.total:.0f} requests over {trace.duration_s / 3600:.2f} h; "
        f"replica: {model.throughput} req/s by batch, starts in {model.startup_s:.1f} s"
    )
    code = 0
    if args.p99_goal is None:
        result = simulate(trace, model, base, price_per_hour=args.price_per_hour)
        chosen = base
    else:
        space = plan.SearchSpace(
            targets=args.search_targets,
            min_replicas=args.search_min_replicas,
            polling_intervals=args.search_polling,
            cooldown_periods=args.search_cooldown,
            scale_down_windows=args.search_down_window,
            activation_values=args.search_activation,
        )
        found = plan.search(
            trace, model, base, args.p99_goal, space, price_per_hour=args.price_per_hour
        )
        best = found.best
        if best is None:
            result, code = found.closest, 1
            print(f"no setting met p99 <= {args.p99_goal:g} s; the closest:", file=sys.stderr)
        else:
            result = best
        chosen = result.settings
    summary = result.summary() | {"settings": plan.describe(chosen)}
    if args.json:
        print(json.dumps(summary), file=out)
    else:
        print(header, file=out)
        if args.p99_goal is not None:
            _print_candidates(found, out)
        print(f"\nsettings: {plan.describe(chosen)}", file=out)
        for key, value in result.summary().items():
            print(f"  {key:16} {value:g}", file=out)
    if args.plot:
        from podserve.autoscale.plot import plot

        print(f"plot: {plot(result, args.plot)}", file=sys.stderr)
    if args.p99_goal is not None or args.yaml:
        text, note = _yaml(args, chosen)
        if args.yaml:
            args.yaml.write_text(text)
            print(f"ScaledObject: {args.yaml} ({note})", file=sys.stderr)
        elif not args.json:
            print(f"\n# {note}\n{text}", file=out, end="")
    return code


def _print_candidates(found: Any, out: Any, limit: int = 5) -> None:
    """The cheapest settings that meet the goal, and how many cheaper ones miss it."""
    from podserve.autoscale.plan import describe

    meeting = found.meeting
    cheapest = meeting[0].replica_seconds if meeting else float("inf")
    missing = sum(1 for c in found.candidates if c.replica_seconds < cheapest)
    print(
        f"\n{len(found.candidates)} settings simulated; {len(meeting)} meet p99 <= "
        f"{found.goal_p99_s:g} s ({missing} cheaper ones miss it). Cheapest that meet it:",
        file=out,
    )
    print("| p99 s | max s | GPU-h | settings |", file=out)
    print("|---:|---:|---:|---|", file=out)
    for c in meeting[:limit]:
        print(
            f"| {c.p99:.1f} | {c.max_wait:.1f} | {c.gpu_hours:.2f} | {describe(c.settings)} |",
            file=out,
        )
