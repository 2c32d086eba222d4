"""The calling process's CPU per call: emotion.Client against a grpc.aio channel, one connection.

    python benchmarks/client_cpu.py                  # small, medium, large JPEG; 15 rounds
    python benchmarks/client_cpu.py --images small --rounds 30
    python benchmarks/client_cpu.py --images small --profile emotion   # cProfile of one window

One ``emotion serve`` with the mock model (one worker) answers every client.
Each client runs in a process of its own (nothing of one library, grpcio's
threads or a warm cache, is counted against the other), started once per
image and kept: it connects, warms up, and then waits. A round asks each
client in turn, starting with the next one each round, for one window: its
8 callers start over one connection, run ``--ramp`` seconds unmeasured and
``--seconds`` measured, closed loop, and stop; only one client loads the
server at a time. A window's figure is the CPU the process spent
(``time.process_time``, every thread of it) divided by the calls answered
in it.

Windows a few seconds apart meet the same machine: this one's speed
wanders by 20-30% within minutes, more than the differences measured, so
each round's windows are compared with each other, never with another
round's. The report gives each client's CPU per call and its ratio to
grpc.aio's window of the same round, as the median over the rounds and the
range. The clients:

- ``emotion``: ``emotion.Client.predict`` with its defaults (retries on).
- ``grpc.aio``: a grpcio channel doing the same message work per call: each
  Request written and each Response read (strictly) by ``emotion.codec``.
- ``grpc.aio, bytes``: the same channel sending one Request written once
  and keeping each answer's bytes unread, as the serving benchmark's load
  generator does: grpcio's floor.

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


async def serve_windows(args: argparse.Namespace, payload: bytes) -> None:
    """The child: connect, warm up, then run one window per line read, until ``quit``."""
    if args.client == "emotion":
        call, close = await _emotion_calls(args.target, payload)
    else:
        call, close = await _grpc_calls(
            args.target, payload, as_bytes=args.client.endswith("bytes")
        )
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    await window(call, args.in_flight, args.warmup, 0.0)  # the connection opened, caches warm
    print("ready", flush=True)
    while (line := (await commands.readline()).decode().split()) and line[0] == "window":
        seconds, ramp = float(line[1]), float(line[2])
        print(json.dumps(await window(call, args.in_flight, ramp, seconds, args.profile_to)))
        sys.stdout.flush()
    result = close()
    if asyncio.iscoroutine(result):
        await result


async def window(
    call: Callable[[], Awaitable[object]],
    in_flight: int,
    ramp: float,
    seconds: float,
    profile_to: str = "",
) -> dict[str, float]:
    """``in_flight`` callers for ``ramp`` seconds, then ``seconds`` measured; then they stop."""
    loop = asyncio.get_running_loop()
    state = {"measuring": False, "stop": False, "calls": 0}

    async def caller() -> None:
        while not state["stop"]:
            await call()
            if state["measuring"]:
                state["calls"] += 1

    callers = [asyncio.ensure_future(caller()) for _ in range(in_flight)]
    await asyncio.sleep(ramp)
    profile = cProfile.Profile() if profile_to else None
    cpu, wall = time.process_time(), loop.time()
    state["measuring"] = True
    if profile is not None:
        profile.enable()
    await asyncio.sleep(seconds)
    state["measuring"] = False
    cpu, wall = time.process_time() - cpu, loop.time() - wall
    if profile is not None:
        profile.disable()
        profile.dump_stats(profile_to)
    state["stop"] = True
    await asyncio.gather(*callers)
    return {"cpu": cpu, "wall": wall, "calls": state["calls"]}


# The parent: the server, the clients, the rounds, the report.


class Child:
    """One client's process, kept for every window of one image."""

    def __init__(
        self,
        client: str,
        target: str,
        image: Path,
        args: argparse.Namespace,
        profile_to: str = "",
        *,
        quiet: bool = False,
    ) -> None:
        env = None
        if client.startswith("emotion from "):
            # Another checkout's emotion package first on the path: a before/after pair.
            env = {**os.environ, "PYTHONPATH": client.removeprefix("emotion from ")}
            client = "emotion"
        command = [
            *(sys.executable, __file__, "--child", client, "--target", target),
            *("--image-file", str(image), "--warmup", str(args.warmup)),
            *("--in-flight", str(args.in_flight), "--profile-to", profile_to),
        ]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if quiet else None,
            text=True,
            env=env,
        )
        self._args = args

    def ready(self) -> bool:
        """Whether the client connected and warmed up (False: it failed)."""
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip() == "ready"

    def window(self, seconds: float | None = None) -> dict[str, float]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        seconds = self._args.seconds if seconds is None else seconds
        self.process.stdin.write(f"window {seconds} {self._args.ramp}\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())  # type: ignore[no-any-return]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("quit\n")
        self.process.stdin.close()
        self.process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", nargs="+", default=["small", "medium", "large"])
    parser.add_argument("--clients", nargs="+", default=list(CLIENTS), choices=CLIENTS)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=1.0, help="measured, per window")
    parser.add_argument("--ramp", type=float, default=0.3, help="unmeasured, per window")
    parser.add_argument("--warmup", type=float, default=1.5, help="once, per client and image")
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
        "--profile", choices=CLIENTS, help="print a cProfile of this client, one window"
    )
    parser.add_argument("--child", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--image-file", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.clients += [f"emotion from {Path(folder).resolve()}" for folder in args.also]
    if args.child:
        args.client = args.child
        asyncio.run(serve_windows(args, Path(args.image_file).read_bytes()))
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
        _wait_ready(server.address, next(iter(files.values())), args)
        if args.profile:
            _profile(args, server.address, files)
            return
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for image, path in files.items():
            children = {
                client: Child(client, server.address, path, args) for client in args.clients
            }
            try:
                for client, child in children.items():
                    if not child.ready():
                        raise SystemExit(f"{client} could not call the server")
                for round_ in range(args.rounds):
                    shift = round_ % len(args.clients)
                    for client in args.clients[shift:] + args.clients[:shift]:
                        result = children[client].window()
                        results.setdefault((image, client), []).append(result)
                        print(
                            f"<!-- round {round_ + 1} {client} {image}: {result['calls']} calls, "
                            f"{1000 * result['cpu'] / result['calls']:.3f} ms/call -->",
                            flush=True,
                        )
            finally:
                for child in children.values():
                    child.close()
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


def _wait_ready(target: str, image: Path, args: argparse.Namespace) -> None:
    """Until the server answers an emotion.Client (in a child of its own)."""
    deadline = time.monotonic() + 120
    probe = argparse.Namespace(**{**vars(args), "warmup": 0.2})
    while True:
        child = Child("emotion", target, image, probe, quiet=True)  # refused until it listens
        ready = child.ready()
        child.process.kill()
        child.process.wait()
        if ready:
            return
        if time.monotonic() > deadline:
            raise SystemExit("emotion serve did not start")
        time.sleep(0.5)


def _profile(args: argparse.Namespace, target: str, files: dict[str, Path]) -> None:
    import pstats

    for image, path in files.items():
        stats_file = str(path.with_suffix(".prof"))
        child = Child(args.profile, target, path, args, profile_to=stats_file)
        if not child.ready():
            raise SystemExit(f"{args.profile} could not call the server")
        result = child.window(max(args.seconds, 4.0))
        child.close()
        print(f"## {args.profile}, {image}: {1000 * result['cpu'] / result['calls']:.3f} ms/call")
        stats = pstats.Stats(stats_file)
        stats.sort_stats("tottime").print_stats(35)
        stats.sort_stats("cumulative").print_stats(45)


if __name__ == "__main__":
    main()
