"""HTTP/2 attacks against one worker, while a legitimate client keeps calling: latency, errors, RSS.

    python benchmarks/attacks.py [--seconds 10] [--only rapid-reset slow-body ...]
                                 [--repeat zero-window ...]

Each attack runs for ``--seconds`` against ``emotion serve --workers 1`` with
the mock model, then against the plain grpcio reference (reference_grpcio.py),
from 4 threads (2 for zero-window) of a process of its own driving raw h2
connections (tests/support/h2client.py) on 127.0.0.1.
Meanwhile 4 grpcio callers on their own connections call in a closed loop;
the report gives their p50/p99 and errors, how many of ``--new-connections``
new connections opened during the attack (one call each, raw h2) were
served, and the server's RSS (all its processes) before, at the peak, and 3 s
after the attack, and its open file descriptors before and after. The
attacks named by ``--repeat`` then run 3 times more (each followed by 3 s),
without the callers, and the RSS after them is reported too. A benchmark, not
a test: see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from images import jpeg, noise_jpeg, portrait
from loadgen import grpc_caller, wait_ready
from servers import HERE, MOCK, Target, _tree, targets

sys.path.insert(0, str(HERE.parent / "tests"))
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame
from support.guarding import zero_window as zero_window_calls
from support.h2client import RawConnection, framed

from emotion import Request
from emotion.contract import RUN_PIPELINE_PATH

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MiB = 1024 * 1024
Attack = Callable[[int, threading.Event], None]


def _until(stop: threading.Event, connect: Callable[[], None]) -> None:
    """Run ``connect`` again and again (a new connection each time) until ``stop``."""
    while not stop.is_set():
        with contextlib.suppress(OSError, ProtocolError, AssertionError):
            connect()


def rapid_reset(port: int, stop: threading.Event) -> None:
    body = framed(b"\x0a" + bytes(64 * 1024))

    def one() -> None:
        connection = RawConnection(port)
        try:
            while not stop.is_set() and connection.goaway is None and not connection.closed:
                connection.reset_early(body)
        finally:
            connection.close()

    _until(stop, one)


def slow_body(port: int, stop: threading.Event) -> None:
    def one() -> None:
        connection = RawConnection(port)
        try:
            streams = [connection.open(connection.headers()) for _ in range(100)]
            for stream in streams:  # a 1 MB message announced, a byte sent
                connection.h2.send_data(stream, framed(b"\x0a", declared=1_000_000))
            connection.sock.sendall(connection.h2.data_to_send())
            while not stop.is_set() and not connection.closed:
                for stream in streams:  # a byte every 100 ms, while the stream lasts
                    with contextlib.suppress(Exception):
                        connection.h2.send_data(stream, b"\x00")
                connection.sock.sendall(connection.h2.data_to_send())
                connection.drain(wait=0.1)
        finally:
            connection.close()

    _until(stop, one)


def zero_window(port: int, stop: threading.Event) -> None:
    """A connection with SETTINGS_INITIAL_WINDOW_SIZE 0: 25 calls of a 1.3 MB JPEG, answers unread.

    Held until ``stop``; 2 threads make the issue's 50 calls on 2 connections.
    """
    message = framed(bytes(Request(image=noise_jpeg())))
    with contextlib.suppress(OSError, ProtocolError):
        connection = zero_window_calls(port, message, 25)
        try:
            stop.wait()
        finally:
            connection.close()


def header_block(port: int, stop: threading.Event) -> None:
    frames = [HeadersFrame(1, b"\x82" + bytes(1023)).serialize()]
    frames += [ContinuationFrame(1, bytes(MiB - 16)).serialize() for _ in range(63)]

    def one() -> None:
        connection = RawConnection(port)
        try:
            for frame in frames:
                connection.sock.sendall(frame)
                if stop.is_set():
                    break
            connection.wait_closed(5)
        finally:
            connection.close()

    _until(stop, one)


def idle_connections(port: int, stop: threading.Event) -> None:
    held: list[socket.socket] = []
    try:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                if len(held) < 300:  # per thread: 4 threads, 1,200 connections
                    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                    sock.sendall(PREFACE)
                    held.append(sock)
                else:
                    time.sleep(0.1)
    finally:
        for sock in held:
            sock.close()


def cap_fill(port: int, stop: threading.Event) -> None:
    """Per thread: 250 connections that send nothing, then 75 that send only the preface, held."""
    held: list[socket.socket] = []
    try:
        for send in [b""] * 250 + [PREFACE] * 75:  # 4 threads: 1,000 and 300
            if stop.is_set():
                break
            with contextlib.suppress(OSError):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(send)
                held.append(sock)
        stop.wait()
    finally:
        for sock in held:
            sock.close()


def stream_flood(port: int, stop: threading.Event) -> None:
    def one() -> None:
        connection = RawConnection(port)
        try:
            # Ignore what the server advertised.
            connection.h2.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 10_000
            connection.h2.remote_settings.acknowledge()
            for _ in range(1000):
                connection.open(connection.headers())
            while not stop.is_set() and not connection.closed:
                connection.drain(wait=0.5)
        finally:
            connection.close()

    _until(stop, one)


def ping_flood(port: int, stop: threading.Event) -> None:
    ping = PingFrame(0, b"12345678").serialize() * 100

    def one() -> None:
        connection = RawConnection(port)
        try:
            while not stop.is_set() and not connection.closed:
                connection.sock.sendall(ping)
                connection.drain()
        finally:
            connection.close()

    _until(stop, one)


#: Threads (each its own connections) per attack, where not 4.
THREADS = {"zero-window": 2}
#: Runs after the first of the attacks that --repeat names.
REPEATS = 3

ATTACKS: dict[str, Attack] = {
    "none": lambda port, stop: None,
    "rapid-reset": rapid_reset,
    "slow-body": slow_body,
    "zero-window": zero_window,
    "header-block": header_block,
    "idle-connections": idle_connections,
    "cap-fill": cap_fill,
    "stream-flood": stream_flood,
    "ping-flood": ping_flood,
}


def new_connection(port: int, message: bytes) -> str:
    """One call on a connection of its own: "served", or what the client got instead."""
    try:
        connection = RawConnection(port)
    except OSError as exc:
        return type(exc).__name__
    try:
        outcome = connection.call(RUN_PIPELINE_PATH, iter([message]))
    except (OSError, ProtocolError) as exc:
        return "GOAWAY" if connection.goaway is not None else type(exc).__name__
    finally:
        connection.close()
    return "served" if outcome.status == "0" else f"status {outcome.status}"


def rss(target: Target) -> int:
    assert target.process is not None
    total = 0
    for pid in _tree(target.process.pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def descriptors(target: Target) -> int:
    assert target.process is not None
    count = 0
    for pid in _tree(target.process.pid):
        with contextlib.suppress(OSError):
            count += len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return count


@dataclass
class Row:
    server: str
    attack: str
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    rss: tuple[int, int, int] = (0, 0, 0)
    fds: tuple[int, int] = (0, 0)
    #: What each new connection opened during the attack got ("served", or the error).
    new: Counter[str] = field(default_factory=Counter)
    #: RSS after REPEATS more runs of the attack, if it was repeated.
    repeated: int | None = None

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0

    def line(self) -> str:
        errors = ", ".join(f"{k} {v}" for k, v in self.errors.most_common()) or "0"
        before, peak, after = (value / MiB for value in self.rss)
        served = f"{self.new['served']}/{sum(self.new.values())}"
        failed = ", ".join(f"{k} {v}" for k, v in self.new.most_common() if k != "served")
        repeated = "" if self.repeated is None else f"{self.repeated / MiB:.0f}"
        return (
            f"| {self.attack} | {self.server} | {len(self.latencies)} | "
            f"{self.percentile(0.5):.1f} | {self.percentile(0.99):.1f} | {errors} | "
            f"{served}{f' ({failed})' if failed else ''} | "
            f"{before:.0f} | {peak:.0f} | {after:.0f} | {repeated} | "
            f"{self.fds[0]} → {self.fds[1]} |"
        )


def attacking(attack: str, port: int, seconds: float) -> None:
    """Run ``attack`` from 4 threads for ``seconds``: in a process of its own (see measure)."""
    stop = threading.Event()
    threads = [
        threading.Thread(target=ATTACKS[attack], args=(port, stop), daemon=True)
        for _ in range(THREADS.get(attack, 4))
    ]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(10)


def attacker(target: Target, attack: str, seconds: float) -> multiprocessing.process.BaseProcess:
    """The attack, started in a process of its own: threads of this one would take the GIL
    from the legitimate callers."""
    process = multiprocessing.get_context("spawn").Process(
        target=attacking, args=(attack, target.port, seconds)
    )
    process.start()
    return process


async def ended(process: multiprocessing.process.BaseProcess) -> None:
    await asyncio.to_thread(process.join, 20)
    if process.is_alive():
        process.kill()


async def measure(
    target: Target, attack: str, seconds: float, payload: bytes, new_connections: int
) -> Row:
    row = Row(target.name, attack)
    calls, close = await grpc_caller(target.address, payload, 4)
    before, fds = rss(target), descriptors(target)
    peak = before
    attack_process = attacker(target, attack, seconds)
    ends = time.monotonic() + seconds

    async def caller(call: Callable[[], object]) -> None:
        while time.monotonic() < ends:
            started = time.perf_counter()
            error = await call()  # type: ignore[misc]
            if error is None:
                row.latencies.append(time.perf_counter() - started)
            else:
                row.errors[str(error)] += 1

    async def sample() -> None:
        nonlocal peak
        while time.monotonic() < ends:
            peak = max(peak, rss(target))
            await asyncio.sleep(0.2)

    async def probe() -> None:
        # New connections from 20% into the attack on, once it has opened its own.
        message = framed(bytes(Request(image=payload)))
        started = time.monotonic()
        for index in range(new_connections):
            at = started + seconds * (0.2 + 0.7 * index / new_connections)
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            try:
                got = await asyncio.wait_for(
                    asyncio.to_thread(new_connection, target.port, message), 5
                )
            except TimeoutError:
                got = "no answer in 5 s"
            row.new[got] += 1

    await asyncio.gather(*(caller(call) for call in calls), sample(), probe())
    await ended(attack_process)
    await close()
    await asyncio.sleep(3)
    row.rss = (before, max(peak, rss(target)), rss(target))
    row.fds = (fds, descriptors(target))
    return row


async def repeat(target: Target, attack: str, seconds: float) -> int:
    """The server's RSS after REPEATS more runs of ``attack``, each followed by 3 s."""
    for _ in range(REPEATS):
        await ended(attacker(target, attack, seconds))
        await asyncio.sleep(3)
    return rss(target)


async def run(args: argparse.Namespace) -> None:
    payload = jpeg(portrait())
    # emotion with one worker, and the grpcio reference; the last --log-level wins.
    servers = targets(MOCK, 1, ["--log-level", "error"])[:2]
    print("| attack | server | answers | p50 ms | p99 ms | errors | new connections served "
          f"| RSS MiB before | peak | after | after {REPEATS} more | fds |")  # fmt: skip
    print("|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|---|")
    for attack in ["none", *args.only]:
        for target in servers:
            target.start()
            try:
                await wait_ready(target, payload)
                row = await measure(target, attack, args.seconds, payload, args.new_connections)
                if attack in args.repeat:
                    row.repeated = await repeat(target, attack, args.seconds)
                alive = target.process is not None and target.process.poll() is None
                print(row.line() + ("" if alive else " server died |"), flush=True)
            finally:
                target.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--new-connections",
        type=int,
        default=10,
        help="new connections opened during each attack, one call each",
    )
    parser.add_argument(
        "--only", nargs="*", default=[name for name in ATTACKS if name != "none"], choices=ATTACKS
    )
    parser.add_argument("--repeat", nargs="*", default=["zero-window"], choices=ATTACKS)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
