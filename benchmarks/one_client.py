"""One emotion.Client against several: does one client get what separate ones get from a server?

    python benchmarks/one_client.py                    # 8 callers, small and medium JPEG
    python benchmarks/one_client.py --callers 32 --rounds 5 --workers 16

One `emotion serve` with the mock model and ``--workers`` workers (default:
this machine's CPUs). In each round, for each image, the same callers in a
closed loop for ``--seconds``, in turn through:

- ``one client``: one emotion.Client with its defaults, shared by every caller;
- ``one connection``: one emotion.Client with ``ConnectionPolicy(per_address=1)``
  (what a client was before it kept a pool);
- ``separate``: one emotion.Client per caller, up to sixteen, the callers
  shared among them (what as many processes would get, in one process).

Printed: calls per second, median and range over the rounds, and the ratio
of each to ``separate`` in the same round. The load generator is one Python
process for all three, so its own cost per call counts alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from images import jpeg, noisy, scene
from servers import MOCK, Target

from emotion import Client, ConnectionPolicy

SHAPES = ("one client", "one connection", "separate")


def clients_for(shape: str, target: str, callers: int) -> list[Client]:
    if shape == "one client":
        return [Client(target, timeout=30)]
    if shape == "one connection":
        return [Client(target, timeout=30, connections=ConnectionPolicy(per_address=1))]
    return [Client(target, timeout=30) for _ in range(min(callers, 16))]


async def drive(shape: str, target: str, image: bytes, callers: int, seconds: float) -> float:
    """Calls answered per second by ``callers`` in a closed loop through ``shape``'s clients."""
    clients = clients_for(shape, target, callers)
    answered = 0
    measuring = False
    stop = asyncio.Event()

    async def caller(client: Client) -> None:
        nonlocal answered
        while not stop.is_set():
            await client.predict(image)
            answered += measuring

    try:
        tasks = [asyncio.ensure_future(caller(clients[i % len(clients)])) for i in range(callers)]
        await asyncio.sleep(min(1.0, seconds / 4))  # connections grow, workers warm
        measuring = True
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        measuring = False
        elapsed = time.perf_counter() - started
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        for client in clients:
            client.close()
    return answered / elapsed


async def wait_ready(target: str, image: bytes, seconds: float = 60) -> None:
    give_up = time.monotonic() + seconds
    while True:
        try:
            async with Client(target, timeout=5) as client:
                await client.predict(image)
                return
        except OSError:
            if time.monotonic() > give_up:
                raise
            await asyncio.sleep(0.2)


async def main(args: argparse.Namespace) -> None:
    images = {
        "small JPEG 320x240": jpeg(noisy(scene(320, 240), 40), 85),
        "medium JPEG 1280x720": jpeg(noisy(scene(1280, 720), 40), 80),
    }
    server = Target(
        "emotion",
        "grpc",
        [
            sys.executable, "-m", "emotion", "serve", "--port", "{port}", "--model", MOCK,
            "--workers", str(args.workers), "--log-level", "warning",
        ],
    )  # fmt: skip
    server.start()
    try:
        await wait_ready(server.address, images["small JPEG 320x240"])
        rates: dict[tuple[str, str], list[float]] = {}
        ratios: dict[tuple[str, str], list[float]] = {}
        for number in range(args.rounds):
            for name, image in images.items():
                # Alternate the order from round to round: this machine drifts.
                shapes = SHAPES if number % 2 == 0 else tuple(reversed(SHAPES))
                found = {
                    shape: await drive(shape, server.address, image, args.callers, args.seconds)
                    for shape in shapes
                }
                for shape, rate in found.items():
                    rates.setdefault((name, shape), []).append(rate)
                    ratios.setdefault((name, shape), []).append(rate / found["separate"])
                print(f"round {number + 1}: {name}: " + ", ".join(
                    f"{shape} {rate:.0f}/s" for shape, rate in found.items()
                ), flush=True)  # fmt: skip
    finally:
        server.stop()

    print(
        f"\n{args.callers} callers, {args.workers} workers, {os.cpu_count()} CPUs, "
        f"{args.rounds} rounds of {args.seconds:g} s: calls per second, median (range)\n"
    )
    print("| image | client | calls/s | over separate |")
    print("|---|---|---:|---:|")
    for (name, shape), measured in rates.items():
        ratio = ratios[(name, shape)]
        print(
            f"| {name} | {shape} | {statistics.median(measured):.0f} "
            f"({min(measured):.0f}-{max(measured):.0f}) | {statistics.median(ratio):.2f}x "
            f"({min(ratio):.2f}-{max(ratio):.2f}) |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    asyncio.run(main(parser.parse_args()))
