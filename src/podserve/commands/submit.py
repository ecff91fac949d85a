"""``podserve submit --queue Q``: publish inference requests to a worker queue; print replies."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from podserve.commands import Subparsers


def register(sub: Subparsers) -> None:
    submit = sub.add_parser(
        "submit",
        help="publish inference requests to a worker queue and print the replies",
        description="Publish v2 inference requests to QUEUE and print each reply as one JSON "
        "line (in the order given). Exit status 1 if any reply is an error.",
    )
    submit.add_argument("--queue", required=True, help="the worker's request queue")
    submit.add_argument("--model", help="target model (the 'model' header)")
    submit.add_argument("--model-version", help="target version (the 'model_version' header)")
    body = submit.add_mutually_exclusive_group(required=True)
    body.add_argument(
        "--json",
        action="append",
        metavar="FILE",
        help="a v2 request body (JSON); '-' reads stdin; repeat for more",
    )
    body.add_argument(
        "--text",
        action="append",
        help="one request with this string as a BYTES input; repeat for more",
    )
    submit.add_argument("--input", default="text", help="input name for --text (default: text)")
    submit.add_argument("--repeat", type=int, default=1, help="send every request N times")
    submit.add_argument("--timeout", type=float, default=60.0, help="seconds to wait per reply")
    submit.add_argument("--no-wait", action="store_true", help="publish only, print the ids")
    submit.add_argument("--amqp-url", help="RabbitMQ URL (PODSERVE_AMQP_URL)")
    submit.set_defaults(handler=_submit)


def _requests(args: argparse.Namespace) -> list[bytes]:
    import numpy as np

    from podserve.errors import ConfigurationError
    from podserve.protocol.queue.client import encode_request

    if args.text:
        out = []
        for text in args.text:
            arr = np.empty(1, dtype=object)
            arr[0] = text.encode("utf-8")
            out.append(encode_request({args.input: arr}))
        return out
    bodies = []
    for name in args.json:
        try:
            bodies.append(sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes())
        except OSError as exc:
            raise ConfigurationError(f"cannot read {name}: {exc.strerror}") from None
    return bodies


def _submit(args: argparse.Namespace) -> int:
    from podserve.settings import Settings

    url = args.amqp_url or Settings().amqp_url.get_secret_value()
    bodies = _requests(args) * max(args.repeat, 1)
    return asyncio.run(_submit_async(url, args, bodies))


async def _submit_async(url: str, args: argparse.Namespace, bodies: list[bytes]) -> int:
    import orjson

    from podserve.protocol.queue.client import QueueClient
    from podserve.protocol.queue.convert import HEADER_LENGTH
    from podserve.v2.tensors import tensor_to_json

    failed = False
    async with QueueClient(url, args.queue, connection_name="podserve-submit") as client:
        ids = [
            await client.publish(args.model, body, version=args.model_version) for body in bodies
        ]
        if args.no_wait:
            for cid in ids:
                print(cid)
            return 0
        for cid in ids:
            reply = await client.result(cid, args.timeout)
            doc = reply.json()
            if HEADER_LENGTH in reply.headers:  # binary outputs: print them as JSON data
                arrays = reply.outputs()
                for item in doc.get("outputs", []):
                    item.pop("parameters", None)
                    item["data"] = tensor_to_json(arrays[item["name"]])
            doc["correlation_id"] = cid
            failed |= reply.error is not None
            sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    return 1 if failed else 0
