"""One client on a server of many workers, simulated: why emotion.Client opens 16 connections.

    python benchmarks/balancing_sim.py                 # 16 workers, 32 callers
    python benchmarks/balancing_sim.py --workers 64 --callers 128

A model, not a measurement, for where no machine with many cores is at
hand. The server's workers each work through their calls one at a time
(an event loop: where one connection's calls queue, on small images), each
call taking the same mean time, exponentially distributed. The kernel hands
each new connection to a worker at random (``SO_REUSEPORT`` hashes the
client's port). Callers work in a closed loop: each sends its next call when
its last is answered. Compared, for the same callers:

- ``separate``: sixteen clients of one connection each, the callers shared
  among them in turn (what sixteen processes or sixteen channels get);
- ``pool N``: one client of N connections per address, each call on the
  connection with the fewest calls in flight, ties broken at random
  (emotion.Client with ``ConnectionPolicy(per_address=N)``; its default is 16).

Printed: calls per unit of time, as a ratio of ``separate``'s, over many
random placements of the connections: the mean and the 10th percentile.
The client's own cost per call is left out: it is the same in both cases
when the callers live in one process.
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics


def simulate(
    workers: int,
    callers: int,
    placement: list[int],
    choose: str,
    rng: random.Random,
    calls: int = 20_000,
) -> float:
    """Calls answered per unit of service time, ``placement[i]`` the worker of connection i."""
    connections = len(placement)
    in_flight = [0] * connections
    queue_ends = [0.0] * workers  # when each worker is done with what it has been given
    events: list[tuple[float, int, int]] = []  # (answered at, caller, connection)
    now = 0.0

    def send(caller: int, at: float) -> None:
        if choose == "separate":
            connection = caller % connections
        else:
            least = min(in_flight)
            connection = rng.choice([i for i, n in enumerate(in_flight) if n == least])
        worker = placement[connection]
        start = max(at, queue_ends[worker])
        queue_ends[worker] = start + rng.expovariate(1.0)
        in_flight[connection] += 1
        heapq.heappush(events, (queue_ends[worker], caller, connection))

    for caller in range(callers):
        send(caller, 0.0)
    answered = 0
    warmup = calls // 10
    started = 0.0
    while answered < calls + warmup:
        now, caller, connection = heapq.heappop(events)
        in_flight[connection] -= 1
        answered += 1
        if answered == warmup:
            started = now
        send(caller, now)
    return calls / (now - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--placements", type=int, default=100)
    parser.add_argument("--pools", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    ratios: dict[int, list[float]] = {size: [] for size in args.pools}
    for _ in range(args.placements):
        separate = [rng.randrange(args.workers) for _ in range(16)]
        base = simulate(args.workers, args.callers, separate, "separate", rng)
        for size in args.pools:
            pooled = [rng.randrange(args.workers) for _ in range(size)]
            ratios[size].append(simulate(args.workers, args.callers, pooled, "pool", rng) / base)
    print(
        f"{args.workers} workers, {args.callers} callers, {args.placements} placements: "
        "one client's calls per unit of time over sixteen separate clients'"
    )
    print("| connections per address | mean | 10th percentile |")
    print("|---:|---:|---:|")
    for size, found in ratios.items():
        tenth = statistics.quantiles(found, n=10)[0]
        print(f"| {size} | {statistics.fmean(found):.2f}x | {tenth:.2f}x |")


if __name__ == "__main__":
    main()
