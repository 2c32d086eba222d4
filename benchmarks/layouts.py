"""One worker with inference threads, or with inference processes, against grpcio: one connection.

    python benchmarks/layouts.py                    # small and medium JPEG, 3 rounds
    python benchmarks/layouts.py --images large --rounds 5

Three servers on one connection with 8 callers, the mock model's work:
``emotion serve --workers 1 --inference-processes 0`` (inference threads in
the worker, which is what one connection gets), ``emotion serve --workers 1
--inference-processes N`` (the same worker, decoding and inferring in N
processes fed raw bytes over Unix sockets; one per CPU is the default), and
the plain grpcio reference. Every round runs each server
once per image, one after another, so each round's ratio to grpcio sets runs
made seconds apart; the report gives the median of the rounds and their range.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys

import images
from loadgen import Result, check_answer, drive, wait_ready
from servers import HERE, MOCK, Target

from emotion.runtime import available_cpus


def servers(processes: int) -> list[Target]:
    python = sys.executable
    emotion = [python, "-m", "emotion", "serve", "--port", "{port}", "--model", MOCK]
    one_worker = ["--workers", "1", "--log-level", "warning"]
    return [
        Target("threads", "grpc", [*emotion, *one_worker, "--inference-processes", "0"]),
        Target(
            f"{processes} processes",
            "grpc",
            [*emotion, *one_worker, "--inference-processes", str(processes)],
        ),
        Target("grpcio", "grpc", [python, str(HERE / "reference_grpcio.py"), "--port", "{port}"]),
    ]


def spread(values: list[float], unit: str = "") -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}{unit}"
    return f"{statistics.median(values):.2f}{unit} ({min(values):.2f}-{max(values):.2f})"


async def run(args: argparse.Namespace) -> None:
    payloads = {
        name: data
        for name, data in images.make_images(quick=True).items()
        if any(word in name for word in args.images)
    }
    targets = servers(args.processes)
    results: dict[tuple[str, str], list[Result]] = {}
    for target in targets:
        target.start()
    try:
        first = next(iter(payloads.values()))
        for target in targets:
            await wait_ready(target, first)
            await check_answer(target, first)
        for round_ in range(args.rounds):
            for image, payload in payloads.items():
                for target in targets:
                    result = await drive(target, image, payload, 8, 1, args.warmup, args.seconds)
                    results.setdefault((image, target.name), []).append(result)
                    print(
                        f"<!-- round {round_ + 1} {target.name} {image}: {result.rate:.1f} req/s, "
                        f"{result.cpu_per_request:.2f} ms/req -->",
                        flush=True,
                    )
    finally:
        for target in targets:
            target.stop()

    print(
        "\n| image | server | req/s | server CPU ms/req | client CPU ms/req | "
        "req/s / grpcio's, same round |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for image in payloads:
        reference = results[(image, "grpcio")]
        for target in targets:
            runs = results[(image, target.name)]
            pairs = zip(runs, reference, strict=True)
            ratios = [ours.ok_rate / theirs.ok_rate for ours, theirs in pairs]
            print(
                f"| {image} | {target.name} | {spread([r.ok_rate for r in runs])} | "
                f"{spread([r.cpu_per_request for r in runs])} | "
                f"{spread([r.client_cpu_per_request for r in runs])} | {spread(ratios, 'x')} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", nargs="+", default=["small", "medium"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--processes", type=int, default=available_cpus())
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
