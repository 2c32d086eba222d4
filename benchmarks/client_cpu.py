"""The calling process's CPU per call: emotion.Client against a grpc.aio channel, one connection.

    python benchmarks/client_cpu.py                  # small, medium, large JPEG; 3 rounds
    python benchmarks/client_cpu.py --images small --rounds 5
    python benchmarks/client_cpu.py --images small --profile emotion   # cProfile of one run

One ``emotion serve`` with the mock model (one worker) answers every client.
Each client runs in a process of its own, started afresh for each point, so
that nothing of one library (grpcio's threads, a warm cache) is counted
against the other: 8 callers in flight over one connection, closed loop,
``--seconds`` after ``--warmup``, and the CPU the process spent
(``time.process_time``, every thread of it) divided by the calls answered in
that time. The clients:

- ``emotion``: ``emotion.Client.predict`` with its defaults (retries on).
- ``grpc.aio``: a grpcio channel doing the same message work per call: each
  Request written and each Response read (strictly) by ``emotion.codec``.
- ``grpc.aio, bytes``: the same channel sending one Request written once
  and keeping each answer's bytes unread, as the serving benchmark's load
  generator does: grpcio's floor.

Every round runs each client once per image, one after another, starting
with the next client each round; the report gives the median of the rounds
and their range, and each client's CPU over grpc.aio's in the same round.
A client that gets fewer calls through in its window batches fewer per
read and write, and spends more per call: compare the calls/s too.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import images
from servers import MOCK, Target

CLIENTS = ("emotion", "grpc.aio", "grpc.aio, bytes")
BIG = 64 * 1024 * 1024


def spread(values: list[float], unit: str = "") -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}{unit}"
    return f"{statistics.median(values):.3f}{unit} ({min(values):.3f}-{max(values):.3f})"


# The child: one client, one image, its own process.


async def _emotion_calls(
    target: str, payload: bytes
) -> tuple[Callable[[], Awaitable[object]], Any]:
    import emotion

    # One connection, as the grpc.aio channel has: a client of this code
    # would open more for 8 calls in flight (a checkout before it, one only).
    policy = getattr(emotion, "ConnectionPolicy", None)
    if policy is None:
        client = emotion.Client(target)
    else:
        client = emotion.Client(target, connections=policy(per_address=1))
    return lambda: client.predict(payload), client.close


async def _grpc_calls(
    target: str, payload: bytes, *, as_bytes: bool
) -> tuple[Callable[[], Awaitable[object]], Any]:
    import functools

    import grpc

    from emotion.codec import encode, parse
    from emotion.contract import RUN_PIPELINE_PATH, Request, Response

    options = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_send_message_length", BIG),
        ("grpc.max_receive_message_length", BIG),
    ]
    channel = grpc.aio.insecure_channel(target, options=options)
    if as_bytes:
        method = channel.unary_unary(RUN_PIPELINE_PATH)
        request: object = encode(Request(image=payload))
    else:
        method = channel.unary_unary(
            RUN_PIPELINE_PATH,
            request_serializer=encode,
            response_deserializer=functools.partial(parse, Response),
        )
        request = Request(image=payload)

    async def close() -> None:
        await channel.close()

    return lambda: method(request), close


async def measure(args: argparse.Namespace, payload: bytes) -> dict[str, float]:
    if args.client == "emotion":
        call, close = await _emotion_calls(args.target, payload)
    else:
        call, close = await _grpc_calls(
            args.target, payload, as_bytes=args.client.endswith("bytes")
        )
    loop = asyncio.get_running_loop()
    state = {"measuring": False, "calls": 0}

    async def caller() -> None:
        while not state.get("stop"):
            await call()
            if state["measuring"]:
                state["calls"] += 1

    callers = [asyncio.ensure_future(caller()) for _ in range(args.in_flight)]
    await asyncio.sleep(args.warmup)
    profile = cProfile.Profile() if args.profile_to else None
    cpu, wall = time.process_time(), loop.time()
    state["measuring"] = True
    if profile is not None:
        profile.enable()
    await asyncio.sleep(args.seconds)
    state["measuring"] = False
    cpu, wall = time.process_time() - cpu, loop.time() - wall
    if profile is not None:
        profile.disable()
        profile.dump_stats(args.profile_to)
    state["stop"] = True
    await asyncio.gather(*callers)
    result = close()
    if asyncio.iscoroutine(result):
        await result
    return {"cpu": cpu, "wall": wall, "calls": state["calls"]}


# The parent: the server, the rounds, the report.


def run_child(
    client: str, target: str, image: Path, args: argparse.Namespace, profile_to: str = ""
) -> dict[str, float]:
    env = None
    if client.startswith("emotion from "):
        # Another checkout's emotion package first on the path: a before/after pair.
        env = {**os.environ, "PYTHONPATH": client.removeprefix("emotion from ")}
        client = "emotion"
    command = [
        sys.executable,
        __file__,
        "--child",
        client,
        "--target",
        target,
        "--image-file",
        str(image),
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        "--in-flight",
        str(args.in_flight),
        "--profile-to",
        profile_to,
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", nargs="+", default=["small", "medium", "large"])
    parser.add_argument("--clients", nargs="+", default=list(CLIENTS), choices=CLIENTS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument(
        "--also",
        nargs="+",
        default=[],
        metavar="FOLDER",
        help="also run emotion.Client imported from FOLDER (holding an emotion/ package): "
        "another checkout, for a before/after pair in the same rounds",
    )
    parser.add_argument(
        "--profile", choices=CLIENTS, help="print a cProfile of this client, one run"
    )
    parser.add_argument("--child", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--image-file", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.clients += [f"emotion from {Path(folder).resolve()}" for folder in args.also]
    if args.child:
        args.client, args.image = args.child, args.image_file
        print(json.dumps(asyncio.run(measure(args, Path(args.image).read_bytes()))))
        return

    server = Target(
        "emotion",
        "grpc",
        [
            *(sys.executable, "-m", "emotion", "serve", "--port", "{port}", "--model", MOCK),
            *("--workers", "1", "--log-level", "warning"),
        ],
    )
    folder = Path(tempfile.mkdtemp(prefix="client-cpu-"))
    files: dict[str, Path] = {}
    for name, data in images.make_images(quick=True).items():
        if any(word in name for word in args.images):
            files[name] = folder / f"{len(files)}.jpg"
            files[name].write_bytes(data)
    server.start()
    try:
        _wait_ready(server.address, next(iter(files.values())))
        if args.profile:
            _profile(args, server.address, files)
            return
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for round_ in range(args.rounds):
            for image, path in files.items():
                # Each round starts with another client: the first after another image
                # meets a server still settling (its heap trimmed after large images).
                shift = round_ % len(args.clients)
                for client in args.clients[shift:] + args.clients[:shift]:
                    result = run_child(client, server.address, path, args)
                    results.setdefault((image, client), []).append(result)
                    print(
                        f"<!-- round {round_ + 1} {client} {image}: {result['calls']} calls, "
                        f"{1000 * result['cpu'] / result['calls']:.3f} ms/call -->",
                        flush=True,
                    )
    finally:
        server.stop()

    reference = "grpc.aio" if "grpc.aio" in args.clients else args.clients[0]
    print(f"\n| image | client | calls/s | CPU ms/call | CPU / {reference}'s, same round |")
    print("|---|---|---:|---:|---:|")
    for image in files:
        theirs = [r["cpu"] / r["calls"] for r in results[(image, reference)]]
        for client in args.clients:
            runs = results[(image, client)]
            ours = [r["cpu"] / r["calls"] for r in runs]
            ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
            print(
                f"| {image} | {client} | {spread([r['calls'] / r['wall'] for r in runs])} | "
                f"{spread([1000 * c for c in ours])} | {spread(ratios, 'x')} |"
            )


def _wait_ready(target: str, image: Path) -> None:
    """Until the server answers (one short emotion.Client run in a child)."""
    deadline = time.monotonic() + 120
    probe = argparse.Namespace(seconds=0.2, warmup=0.0, in_flight=1)
    while True:
        try:
            run_child("emotion", target, image, probe)
            return
        except subprocess.CalledProcessError:
            if time.monotonic() > deadline:
                raise SystemExit("emotion serve did not start") from None
            time.sleep(0.5)


def _profile(args: argparse.Namespace, target: str, files: dict[str, Path]) -> None:
    import pstats

    for image, path in files.items():
        stats_file = str(path.with_suffix(".prof"))
        result = run_child(args.profile, target, path, args, profile_to=stats_file)
        print(f"## {args.profile}, {image}: {1000 * result['cpu'] / result['calls']:.3f} ms/call")
        stats = pstats.Stats(stats_file)
        stats.sort_stats("tottime").print_stats(35)
        stats.sort_stats("cumulative").print_stats(45)


if __name__ == "__main__":
    main()
