"""Soak: many calls, bad ones mixed in, against a real `emotion serve`; not part of the tests.

    python benchmarks/soak.py             # 20,000 calls, mock model, a worker per CPU
    python benchmarks/soak.py --model fer --calls 5000

Passes (exit 0) when the server never crashed, every good call got the right
answer, every bad call got the status it deserves, and the workers' memory
after the warm-up grew by less than --max-growth.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from grpclib.client import Channel
from grpclib.exceptions import GRPCError

# It starts the server as the tests do, with their images: tests/ is importable.
TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from conftest import encode, gradient  # noqa: E402
from support.served import start_serving  # noqa: E402

from emotion import PipelineStub, Request, Response  # noqa: E402
from emotion.runtime import available_cpus  # noqa: E402

GOOD = "OK"


def cases(model: str) -> list[tuple[str, bytes, str, Callable[[Response], bool]]]:
    """(name, image bytes, expected status, check of a good answer), weighted by repetition."""
    if model == "fer":
        photo = (TESTS / "fixtures" / "astronaut.jpg").read_bytes()

        def right(answer: Response) -> bool:
            if len(answer.response) != 1 or answer.response[0].expression is None:
                return False
            scores = answer.response[0].expression.to_dict(include_default_values=True)
            return max(scores, key=scores.__getitem__) == "happiness"

        good = [("astronaut", photo, GOOD, right)] * 6
    else:

        def one_default(answer: Response) -> bool:
            return len(answer.response) == 1

        good = [
            ("small jpeg", encode(gradient(320, 240), "JPEG"), GOOD, one_default),
            ("large jpeg", encode(gradient(3000, 2000), "JPEG"), GOOD, one_default),
            ("png", encode(gradient(640, 480), "PNG"), GOOD, one_default),
            ("webp", encode(gradient(640, 480), "WEBP"), GOOD, one_default),
        ] * 2
    jpeg = encode(gradient(640, 480), "JPEG")
    invalid = "INVALID_ARGUMENT"
    bad = [
        ("empty", b"", invalid, lambda _: False),
        ("text", b"hello" * 100, invalid, lambda _: False),
        ("truncated jpeg", jpeg[: len(jpeg) // 2], invalid, lambda _: False),
        ("random bytes", random.Random(1).randbytes(5000), invalid, lambda _: False),
        ("pixel bomb", encode(gradient(9000, 9000).convert("1"), "PNG"), invalid, lambda _: False),
        ("too large", bytes(17 * 1024 * 1024), "RESOURCE_EXHAUSTED", lambda _: False),
    ]
    return good + bad


def worker_rss(root: int) -> int:
    """Resident memory of the server and its worker processes, in bytes."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(entry.name) != root and int(stat[1]) != root:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


async def run(args: argparse.Namespace) -> int:
    spec = {"mock": "emotion.models.mock:MockModel", "fer": "emotion.models.fer:FerModel"}
    server_log = tempfile.TemporaryFile()  # noqa: SIM115 - read at the end, closed at exit
    served = await start_serving(
        "--port",
        "0",
        "--workers",
        str(args.workers),
        "--model",
        spec[args.model],
        "--log-level",
        "info",
        stderr=server_log,
        timeout=120,
    )
    server, port = served.process, served.port
    table = cases(args.model)
    rng = random.Random(args.seed)
    outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
    wrong: list[str] = []
    done = finished = 0
    rss: list[tuple[int, int]] = []
    started = time.monotonic()
    try:
        channels = [Channel("127.0.0.1", port) for _ in range(args.connections)]
        stubs = [PipelineStub(channel) for channel in channels]

        async def caller(slot: int) -> None:
            nonlocal done, finished
            while done < args.calls:
                done += 1
                name, image, expected, right = rng.choice(table)
                try:
                    answer = await stubs[slot % len(stubs)].run_pipeline(
                        Request(image=image), timeout=60
                    )
                    got = GOOD
                    if not right(answer):
                        wrong.append(f"{name}: wrong answer {answer}")
                except GRPCError as exc:
                    got = exc.status.name
                outcomes[(name, got)] += 1
                if got != expected:
                    wrong.append(f"{name}: expected {expected}, got {got}")
                finished += 1
                if finished % 1000 == 0:
                    rss.append((finished, worker_rss(server.pid)))
                    print(
                        f"{finished} calls, {time.monotonic() - started:.0f}s, "
                        f"server RSS {rss[-1][1] / 2**20:.0f} MiB",
                        flush=True,
                    )

        await asyncio.gather(*(caller(slot) for slot in range(args.concurrency)))
        for channel in channels:
            channel.close()
        crashed = server.returncode is not None
    finally:
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)
            await asyncio.wait_for(server.wait(), 60)

    elapsed = time.monotonic() - started
    print(
        f"\n{done} calls in {elapsed:.0f} s ({done / elapsed:.0f}/s), "
        f"{args.concurrency} callers on {args.connections} connections"
    )
    for (name, got), count in sorted(outcomes.items()):
        print(f"  {name:>15}: {got} x {count}")
    # RSS saws up and down as large images come and go; compare the typical
    # level early and late after the warm-up, not two single samples.
    settled = [r for n, r in rss if n > args.warmup]
    half = len(settled) // 2
    early = statistics.median(settled[:half]) if half else 0
    late = statistics.median(settled[half:]) if half else 0
    growth = (late - early) / early if early else 0.0
    print(
        f"server RSS after warm-up: median {early / 2**20:.0f} MiB early, "
        f"{late / 2**20:.0f} MiB late ({growth:+.1%}); server exit status {server.returncode}"
    )
    server_log.seek(0)
    log_lines = server_log.read().decode(errors="replace").splitlines()
    # Bad calls log at WARNING; anything worse, or a worker restart, is a failure.
    troubles = [
        line
        for line in log_lines
        if " ERROR " in line or "Traceback" in line or "restarting" in line or " CRITICAL " in line
    ]
    failures = list(wrong) + [f"server log: {line}" for line in troubles]
    if crashed:
        failures.append("the server exited during the run")
    if server.returncode != 0:
        failures.append(f"the server exited with {server.returncode} after SIGTERM")
    if growth > args.max_growth:
        failures.append(f"memory grew {growth:.1%} after the warm-up (limit {args.max_growth:.0%})")
    for failure in failures[:20]:
        print(f"FAIL {failure}")
    print(f"{done - len(wrong)} passed, {len(failures)} failed")
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--model", choices=["mock", "fer"], default="mock")
    parser.add_argument("--workers", type=int, default=available_cpus())
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3000, help="calls before the memory baseline")
    parser.add_argument("--max-growth", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=7)
    raise SystemExit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
