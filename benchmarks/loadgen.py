"""Closed-loop load: every caller sends its next request when the previous one is answered."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import grpc
from servers import Memory, Target

from emotion import Request, Response
from emotion.contract import RUN_PIPELINE_PATH

BIG = 64 * 1024 * 1024


@dataclass
class Result:
    server: str
    image: str
    size: int
    concurrency: int
    connections: int
    requests: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    cpu: float = 0.0
    client_cpu: float = 0.0
    peak: Memory = field(default_factory=Memory)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def ok_rate(self) -> float:
        """Successful calls per second: a reference that refuses fast must not look fast."""
        return (self.requests - sum(self.errors.values())) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def cpu_per_request(self) -> float:
        return self.cpu / self.requests * 1000 if self.requests else float("nan")

    @property
    def client_cpu_per_request(self) -> float:
        return self.client_cpu / self.requests * 1000 if self.requests else float("nan")


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
        method = channel.unary_unary(RUN_PIPELINE_PATH)

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


def connections_for(kind: str, callers: int, limit: int) -> int:
    """Connections a point opens: gRPC multiplexes up to ``limit``; HTTP/1.1, one per caller."""
    return min(callers, limit) if kind == "grpc" else callers


SAMPLE_EVERY = 0.2  # seconds between memory samples while a point runs


async def drive(
    target: Target,
    image: str,
    payload: bytes,
    concurrency: int,
    connections: int,
    warmup: float,
    seconds: float,
) -> Result:
    """``concurrency`` closed-loop callers sharing ``connections`` connections (gRPC), round robin.

    The server's memory is sampled through warm-up and measurement alike: both
    are load, and a peak is a peak.
    """
    result = Result(target.name, image, len(payload), concurrency, connections)
    make = grpc_caller if target.kind == "grpc" else rest_caller
    calls, close = await make(target.address, payload, connections)
    loop = asyncio.get_running_loop()
    begin = loop.time() + warmup
    end = begin + seconds
    cpu_at: dict[str, tuple[float, float]] = {}
    sampling: list[float] = []
    pids = target.pids()

    async def snapshot(at: float, key: str) -> None:
        await asyncio.sleep(max(0.0, at - loop.time()))
        cpu_at[key] = target.cpu_seconds(), time.process_time()

    def measure() -> tuple[Memory, float]:
        spent = time.thread_time()
        return target.memory(pids), time.thread_time() - spent

    async def sample() -> None:
        # Reading smaps_rollup costs a millisecond or so per process: off the
        # loop, and not counted as the callers' CPU (at 20 req/s it was 2.3 ms
        # per request, twice what the calls cost).
        while loop.time() < end:
            started = loop.time()
            now, spent = await asyncio.to_thread(measure)
            result.peak = result.peak.peak(now)
            if begin <= started < end:
                sampling.append(spent)
            await asyncio.sleep(SAMPLE_EVERY)

    async def caller(slot: int) -> None:
        call = calls[slot % len(calls)]
        while (started := loop.time()) < end:
            error = await call()
            finished = loop.time()
            # Every call that ends in the window counts. Dropping those that
            # began before it would lose about one latency's worth of calls per
            # window (40% of a 5 s window at 2 s latency), whose server CPU the
            # window still counts.
            if begin <= finished <= end:
                result.requests += 1
                result.latencies.append(finished - started)
                if error is not None:
                    result.errors[error] += 1

    await asyncio.gather(
        snapshot(begin, "begin"),
        snapshot(end, "end"),
        sample(),
        *(caller(slot) for slot in range(concurrency)),
    )
    await close()
    result.seconds = seconds
    result.cpu = cpu_at["end"][0] - cpu_at["begin"][0]
    result.client_cpu = cpu_at["end"][1] - cpu_at["begin"][1] - sum(sampling)
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
        raw = await channel.unary_unary(RUN_PIPELINE_PATH)(
            bytes(Request(image=payload)), timeout=30
        )
    if len(Response.parse(raw).response) != 1:
        raise SystemExit(f"{target.name} answered {Response.parse(raw)}")
