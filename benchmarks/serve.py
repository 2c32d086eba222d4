"""emotion against a plain grpcio server and a REST server, doing the same work, in one run.

    python benchmarks/serve.py                      # the full sweep, about 8 minutes
    python benchmarks/serve.py --quick              # 8 callers only, about 2.5 minutes
    python benchmarks/serve.py --model fer          # the real model: overhead and floor
    python benchmarks/serve.py --connections 1      # every gRPC caller on one connection
    python benchmarks/serve.py --images small       # only the images whose name says so
    python benchmarks/serve.py --rounds 3           # each point 3 times: medians, ranges

Starts each server itself on 127.0.0.1, drives it with a closed-loop load
generator (every caller sends its next request when the previous one is
answered), and prints a markdown report: req/s, latency percentiles, errors,
server CPU per request and the server's peak memory, then its memory idle
and under load, then the ratios emotion/reference.

Each gRPC point runs once per ``--connections`` count N, its callers sharing
min(callers, N) connections: N=1 is what one client process gets, all its
calls multiplexed on one HTTP/2 connection. REST is HTTP/1.1, one call per
connection at a time, so it runs once per point with a connection per caller.

With the mock model all three servers do the blog post's work: decode the
image and resize it to 128x128. With ``--model fer`` only emotion runs, with
the default model, each point set against the model alone in this process,
measured just before and just after it, on as many threads as the point has
images in flight (at most one per CPU): its images per second against the
server's req/s, its CPU per image against the server's CPU per request.

The parts, one module each: ``images`` (what is sent), ``servers`` (starting
them, reading their CPU time and memory), ``loadgen`` (the closed-loop
callers), ``model_alone`` (the model in this process) and ``report`` (the
tables); this file runs them in order.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time

import images
import report
from loadgen import SAMPLE_EVERY, Result, check_answer, connections_for, drive, wait_ready
from model_alone import Alone, loaded, model_alone
from servers import MOCK, Memory, Target, targets

from emotion.model import Model
from emotion.runtime import available_cpus

MODELS = {"mock": MOCK, "fer": "emotion.models.fer:FerModel"}


def choose(payloads: dict[str, bytes], words: list[str] | None) -> dict[str, bytes]:
    """The images whose name holds one of ``words`` (any case); all of them without words."""
    if not words:
        return payloads
    chosen = {
        name: data
        for name, data in payloads.items()
        if any(word.lower() in name.lower() for word in words)
    }
    if not chosen:
        raise SystemExit(f"no image matches {words}: choose among {list(payloads)}")
    return chosen


def plan(servers: list[Target], callers: int, limits: list[int]) -> list[tuple[Target, int]]:
    """The runs of one point, like with like side by side: (server, connections) once each."""
    runs: list[tuple[Target, int]] = []
    for limit in limits:
        for target in servers:
            pair = (target, connections_for(target.kind, callers, limit))
            if pair not in runs:
                runs.append(pair)
    return runs


async def run(args: argparse.Namespace) -> None:
    spec = MODELS[args.model]
    if args.model == "fer":
        payloads = {
            "portrait JPEG 512x512": images.jpeg(images.portrait()),
            "group JPEG 1280x853": images.jpeg(images.group()),
        }
    else:
        payloads = images.make_images(args.quick)
    payloads = choose(payloads, args.images)
    concurrency = [8] if args.quick else args.concurrency
    servers = targets(spec, args.workers, args.emotion_args.split())
    cpus = available_cpus()
    # The machine's speed drifts, by 20% within minutes on a shared VM: each
    # point is set against the model alone measured just before and just after it.
    model = None if args.model == "mock" else loaded(spec)
    rounds: list[list[Result]] = []
    alone: list[list[Alone]] = []
    # By the point's place in its round: the one-caller points only.
    alone_paced: list[dict[int, Alone]] = []
    idle: dict[str, Memory] = {}
    print(
        f"# emotion serving benchmark ({platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')})\n"
    )
    limits = ", ".join(f"min(callers, {n})" for n in args.connections)
    print(
        f"Model `{spec}`, emotion with {args.workers} workers"
        f"{' and ' + args.emotion_args if args.emotion_args else ''}; closed loop, "
        f"{args.warmup:g} s warm-up then {args.seconds:g} s measured per point; "
        "the load generator runs on the same machine. "
        f"Each gRPC point runs on {limits} connections, its callers shared among them; "
        "REST (HTTP/1.1) on one connection per caller. "
        "Memory is PSS summed over each server's processes.\n",
        flush=True,
    )
    for target in servers:
        target.start()
    try:
        first = next(iter(payloads.values()))
        for target in servers:
            await wait_ready(target, first)
            await check_answer(target, first)
        for target in servers:
            idle[target.name] = target.memory()
        for _ in range(args.rounds):
            results: list[Result] = []
            floors: list[Alone] = []
            paced: dict[int, Alone] = {}
            rounds.append(results)
            alone.append(floors)
            alone_paced.append(paced)
            for image, payload in payloads.items():
                for callers in concurrency:
                    threads = min(callers, cpus)
                    for target, connections in plan(servers, callers, args.connections):
                        if model is not None:
                            before = model_alone(model, payload, args.seconds, threads)
                        result = await drive(
                            target, image, payload, callers, connections, args.warmup, args.seconds
                        )
                        results.append(result)
                        if model is not None:
                            after = model_alone(model, payload, args.seconds, threads)
                            floors.append(Alone.mean(before, after))
                            if callers == 1:
                                paced[len(floors) - 1] = pace(model, payload, result, args.seconds)
                        print(
                            f"<!-- {target.name} {image} c={callers} n={connections}: "
                            f"{result.rate:.1f} req/s -->",
                            flush=True,
                        )
    finally:
        for target in servers:
            target.stop()

    every = [result for results in rounds for result in results]
    print("\n## Results\n")
    if args.rounds > 1:
        print(f"Each point's round with the median req/s of {args.rounds}.\n")
    print(report.table(report.median_runs(rounds)))
    print("\n## Memory\n")
    print(
        "Each server's processes together, PSS (shared pages counted once) and RSS "
        "(counted in every process that maps them): idle once warm, and the highest "
        f"sample (every {SAMPLE_EVERY:g} s) under load.\n"
    )
    print(report.memory(idle, every))
    if args.model == "mock":
        print("\n## emotion relative to the references\n")
        print(
            "Successful calls per second; gRPC at the same callers and connections. "
            "With several rounds, the median of the rounds' ratios and their range.\n"
        )
        print(report.ratios(rounds))
        return
    print("\n## emotion against the model alone\n")
    print(
        "The model alone: decode + process_sample back to back in this process, on as "
        f"many threads as the point had images in flight, at most one per CPU ({cpus}), "
        "one loaded model shared; measured just before and just after each point, and "
        "the mean used. Its images/s are what the server's req/s should approach; its "
        "CPU per image (images sharing the cores each cost more than one alone) what "
        "the server's CPU per request should.\n"
    )
    print(report.against_alone(rounds, alone, cpus))
    print("\n## One call in flight against the model paced\n")
    print(
        "With one call in flight the model idles between images while the answer "
        "travels and the next request comes, and a CPU that idles runs the next image "
        "slower. The model alone again, on one thread, pausing after each image as long "
        "as the server was idle in each call (the point's mean latency less its CPU per "
        "request), measured just after the point.\n"
    )
    print(report.against_paced(rounds, alone, alone_paced))


def pace(model: Model, payload: bytes, result: Result, seconds: float) -> Alone:
    """The model alone, one image at a time, pausing as long as a served call idled the server.

    With one call in flight the server's steps run one after another, so a
    call's latency less the server's CPU for it is the time nothing of the
    server ran: the answer on its way, the client, the next request coming.
    """
    latency = sum(result.latencies) / max(1, len(result.latencies))
    pause = max(0.0, latency - result.cpu_per_request / 1000)
    return model_alone(model, payload, seconds, 1, pause=pause)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(MODELS), default="mock")
    parser.add_argument(
        "--workers",
        type=int,
        default=available_cpus(),
        help="emotion serve --workers (default: the CPUs this process may use, as the server's)",
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--connections",
        type=int,
        nargs="+",
        default=[1, 8],
        help="gRPC connections per point: each N runs the callers on min(callers, N) of them",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every point this many times, interleaved; tables show medians and ranges",
    )
    parser.add_argument("--quick", action="store_true", help="8 callers only, no PNG")
    parser.add_argument(
        "--images", nargs="+", metavar="WORD", help="only the images whose name holds a WORD"
    )
    parser.add_argument(
        "--emotion-args", default="", help="more `emotion serve` flags, e.g. '--max-batch-size 4'"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
