"""emotion against a plain grpcio server and a REST server, doing the same work, in one run.

    python benchmarks/serve.py                      # the full sweep, about 6 minutes
    python benchmarks/serve.py --quick              # fewer points, about 1 minute
    python benchmarks/serve.py --model fer          # the real model: serving overhead

Starts each server itself on 127.0.0.1, drives it with a closed-loop load
generator (every caller sends its next request when the previous one is
answered), and prints a markdown report: req/s, latency percentiles, errors
and server CPU per request, then the ratios emotion/reference.

With the mock model all three servers do the blog post's work: decode the
image and resize it to 128x128. With ``--model fer`` only emotion runs, with
the default model, and its CPU per request is set against the model's own CPU
per image measured in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import images
from PIL import Image

from emotion import Request, Response

HERE = Path(__file__).resolve().parent
METHOD = "/emotion.v1.Pipeline/RunPipeline"
BIG = 64 * 1024 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- images ----------------------------------------------------------------


def noisy(image: Image.Image, amount: int) -> Image.Image:
    """Add fine noise, which JPEG cannot compress away: makes files realistically large."""
    noise = Image.effect_noise(image.size, amount).convert("RGB")
    return Image.blend(image, noise, 0.12)


def make_images(quick: bool) -> dict[str, bytes]:
    scene = images.scene
    cases = {
        "small JPEG 320x240": images.jpeg(noisy(scene(320, 240), 40), 85),
        "medium JPEG 1280x720": images.jpeg(noisy(scene(1280, 720), 40), 80),
        "large JPEG 4000x3000": images.jpeg(noisy(scene(4000, 3000), 30), 80),
        "huge JPEG 4000x3000": images.jpeg(noisy(scene(4000, 3000), 90), 97),
        "PNG 1280x720": images.png(scene(1280, 720)),
    }
    if quick:
        del cases["PNG 1280x720"]
    return cases


# --- servers ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Target:
    name: str
    kind: str  # "grpc" or "rest"
    command: list[str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [part.replace("{port}", str(self.port)) for part in self.command]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and all its descendants so far."""
        assert self.process is not None
        return sum(_cpu_of(pid) for pid in _tree(self.process.pid))


def _tree(root: int) -> Iterator[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents.setdefault(int(stat[1]), []).append(int(entry.name))
    pending = [root]
    while pending:
        pid = pending.pop()
        yield pid
        pending.extend(parents.get(pid, []))


def _cpu_of(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(stat[11]) + int(stat[12])) / CLOCK_TICKS


def targets(model: str, workers: int, extra: list[str]) -> list[Target]:
    python = sys.executable
    ours = Target(
        "emotion",
        "grpc",
        [
            python,
            "-m",
            "emotion",
            "serve",
            "--port",
            "{port}",
            "--model",
            model,
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            *extra,
        ],
    )
    if model != "emotion.models.mock:MockModel":
        return [ours]
    return [
        ours,
        Target("grpcio", "grpc", [python, str(HERE / "reference_grpcio.py"), "--port", "{port}"]),
        Target("REST", "rest", [python, str(HERE / "reference_rest.py"), "--port", "{port}"]),
    ]


# --- load ------------------------------------------------------------------


@dataclass
class Result:
    server: str
    image: str
    size: int
    concurrency: int
    requests: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def cpu_per_request(self) -> float:
        return self.cpu / self.requests * 1000 if self.requests else float("nan")


Call = Callable[[], Awaitable[str | None]]


async def grpc_caller(
    address: str, payload: bytes, connections: int
) -> tuple[list[Call], Callable[[], Awaitable[None]]]:
    options = [
        ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per channel
        ("grpc.max_send_message_length", BIG),
        ("grpc.max_receive_message_length", BIG),
    ]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(connections)]
    request = bytes(Request(image=payload))

    def make(channel: grpc.aio.Channel) -> Call:
        method = channel.unary_unary(METHOD)

        async def call() -> str | None:
            try:
                await method(request, timeout=60)
            except grpc.aio.AioRpcError as exc:
                return str(exc.code().name)
            return None

        return call

    async def close() -> None:
        for channel in channels:
            await channel.close()

    return [make(c) for c in channels], close


async def rest_caller(
    address: str, payload: bytes, connections: int
) -> tuple[list[Call], Callable[[], Awaitable[None]]]:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections), timeout=aiohttp.ClientTimeout(60)
    )
    body = json.dumps({"image": base64.b64encode(payload).decode()}).encode()
    url = f"http://{address}/predict"

    async def call() -> str | None:
        try:
            async with session.post(
                url, data=body, headers={"content-type": "application/json"}
            ) as reply:
                await reply.read()
                return None if reply.status == 200 else f"HTTP {reply.status}"
        except aiohttp.ClientError as exc:
            return type(exc).__name__

    return [call], session.close


async def drive(
    target: Target, image: str, payload: bytes, concurrency: int, warmup: float, seconds: float
) -> Result:
    result = Result(target.name, image, len(payload), concurrency)
    # HTTP/1.1 carries one call per connection at a time; gRPC multiplexes.
    connections = min(concurrency, 8) if target.kind == "grpc" else concurrency
    make = grpc_caller if target.kind == "grpc" else rest_caller
    calls, close = await make(target.address, payload, connections)
    loop = asyncio.get_running_loop()
    begin = loop.time() + warmup
    end = begin + seconds
    cpu_at: dict[str, float] = {}

    async def snapshot(at: float, key: str) -> None:
        await asyncio.sleep(max(0.0, at - loop.time()))
        cpu_at[key] = target.cpu_seconds()

    async def caller(slot: int) -> None:
        call = calls[slot % len(calls)]
        while (started := loop.time()) < end:
            error = await call()
            finished = loop.time()
            if started >= begin and finished <= end:
                result.requests += 1
                result.latencies.append(finished - started)
                if error is not None:
                    result.errors[error] += 1

    await asyncio.gather(
        snapshot(begin, "begin"),
        snapshot(end, "end"),
        *(caller(slot) for slot in range(concurrency)),
    )
    await close()
    result.seconds = seconds
    result.cpu = cpu_at["end"] - cpu_at["begin"]
    return result


async def wait_ready(target: Target, payload: bytes) -> None:
    """Until the server answers a real request (model loaded, every worker up)."""
    deadline = time.monotonic() + 120
    calls, close = await (grpc_caller if target.kind == "grpc" else rest_caller)(
        target.address, payload, 1
    )
    try:
        while time.monotonic() < deadline:
            assert target.process is not None
            if target.process.poll() is not None:
                raise SystemExit(f"{target.name} exited with {target.process.returncode}")
            with contextlib.suppress(Exception):
                if await calls[0]() is None:
                    await asyncio.sleep(1.0)  # let the other workers finish loading
                    return
            await asyncio.sleep(0.2)
        raise SystemExit(f"{target.name} did not start")
    finally:
        await close()


async def check_answer(target: Target, payload: bytes) -> None:
    """Every server must answer the contract's way, or the comparison means nothing."""
    if target.kind != "grpc":
        return
    async with grpc.aio.insecure_channel(target.address) as channel:
        raw = await channel.unary_unary(METHOD)(bytes(Request(image=payload)), timeout=30)
    if len(Response.parse(raw).response) != 1:
        raise SystemExit(f"{target.name} answered {Response.parse(raw)}")


# --- in-process model floor ---------------------------------------------


def model_cpu_per_image(spec: str, payload: bytes, seconds: float) -> float:
    """CPU ms per image of decode + process_sample in this process, one thread."""
    from emotion.decode import decode
    from emotion.model import load_model

    model = load_model(spec)
    model.load()
    for _ in range(3):
        model.process_sample(decode(payload, min_size=model.min_size).image)
    count, cpu0, stop = 0, time.process_time(), time.perf_counter() + seconds
    while time.perf_counter() < stop:
        model.process_sample(decode(payload, min_size=model.min_size).image)
        count += 1
    return (time.process_time() - cpu0) / count * 1000


# --- report ----------------------------------------------------------------


def table(results: list[Result]) -> str:
    lines = [
        "| image | bytes | callers | server | req/s | p50 ms | p90 ms | p99 ms | errors "
        "| server CPU ms/req |",
        "|---|---:|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        errors = ", ".join(f"{n} {k}" for k, n in r.errors.items()) or "0"
        lines.append(
            f"| {r.image} | {r.size:,} | {r.concurrency} | {r.server} | {r.rate:.1f} | "
            f"{r.percentile(0.5):.1f} | {r.percentile(0.9):.1f} | {r.percentile(0.99):.1f} | "
            f"{errors} | {r.cpu_per_request:.2f} |"
        )
    return "\n".join(lines)


def ratios(results: list[Result]) -> str:
    def ok_rate(r: Result) -> float:
        return (r.requests - sum(r.errors.values())) / r.seconds if r.seconds else 0.0

    by_key = {(r.server, r.image, r.concurrency): r for r in results}
    lines = [
        "| image | callers | emotion/grpcio req/s | emotion/REST req/s | p99 emotion / grpcio |",
        "|---|---:|---:|---:|---:|",
    ]
    for (server, image, concurrency), ours in by_key.items():
        if server != "emotion":
            continue
        grpcio = by_key.get(("grpcio", image, concurrency))
        rest = by_key.get(("REST", image, concurrency))

        def ratio(other: Result | None, ours: Result = ours) -> str:
            if other is None:
                return "-"
            if ok_rate(other) == 0:
                return "reference failed every call"
            return f"{ok_rate(ours) / ok_rate(other):.2f}x"

        p99 = "-"
        if grpcio is not None and ok_rate(grpcio) and not grpcio.errors:
            p99 = f"{ours.percentile(0.99) / grpcio.percentile(0.99):.2f}"
        lines.append(f"| {image} | {concurrency} | {ratio(grpcio)} | {ratio(rest)} | {p99} |")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> None:
    spec = {"mock": "emotion.models.mock:MockModel", "fer": "emotion.models.fer:FerModel"}[
        args.model
    ]
    if args.model == "fer":
        payloads = {
            "portrait JPEG 512x512": images.jpeg(images.portrait()),
            "group JPEG 1280x853": images.jpeg(images.group()),
        }
    else:
        payloads = make_images(args.quick)
    concurrency = [8] if args.quick else args.concurrency
    servers = targets(spec, args.workers, args.emotion_args.split())
    # The machine's speed drifts between runs; measure the model alone just
    # before and just after the servers, and compare with the mean.
    floors: dict[str, list[float]] = {}
    if args.model != "mock":
        for image, payload in payloads.items():
            floors[image] = [model_cpu_per_image(spec, payload, args.seconds)]
    results: list[Result] = []
    print(
        f"# emotion serving benchmark ({platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')})\n"
    )
    print(
        f"Model `{spec}`, emotion with {args.workers} workers"
        f"{' and ' + args.emotion_args if args.emotion_args else ''}; closed loop, "
        f"{args.warmup:g} s warm-up then {args.seconds:g} s measured per point; "
        "the load generator runs on the same machine. "
        "gRPC callers share up to 8 connections; REST callers a pool of as many.\n",
        flush=True,
    )
    for target in servers:
        target.start()
    try:
        first = next(iter(payloads.values()))
        for target in servers:
            await wait_ready(target, first)
            await check_answer(target, first)
        for image, payload in payloads.items():
            for callers in concurrency:
                for target in servers:
                    result = await drive(target, image, payload, callers, args.warmup, args.seconds)
                    results.append(result)
                    print(
                        f"<!-- {target.name} {image} c={callers}: {result.rate:.1f} req/s -->",
                        flush=True,
                    )
    finally:
        for target in servers:
            target.stop()

    print("\n## Results\n")
    print(table(results))
    if args.model == "mock":
        print("\n## emotion relative to the references\n")
        print(ratios(results))
    else:
        for image, payload in payloads.items():
            floors[image].append(model_cpu_per_image(spec, payload, args.seconds))
        print("\n## Serving overhead: server CPU per request vs the model in-process\n")
        print(
            "The model alone: decode + process_sample on one thread of this process, "
            "before and after the servers ran.\n"
        )
        print(
            "| image | callers | model alone CPU ms/image (before, after) "
            "| server CPU ms/request | overhead |"
        )
        print("|---|---:|---:|---:|---:|")
        for result in results:
            before, after = floors[result.image]
            floor = (before + after) / 2
            cpu = result.cpu_per_request
            alone = f"{floor:.2f} ({before:.2f}, {after:.2f})"
            print(
                f"| {result.image} | {result.concurrency} | {alone} "
                f"| {cpu:.2f} | {(cpu / floor - 1) * 100:+.0f}% |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mock", "fer"], default="mock")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--quick", action="store_true", help="8 callers only, no PNG")
    parser.add_argument(
        "--emotion-args", default="", help="more `emotion serve` flags, e.g. '--max-batch-size 4'"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
