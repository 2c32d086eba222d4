"""A worker's memory after attacks: what they held is freed with their connections, and returned.

Calls cancelled with their connection free their requests at once, and
connections closed for abuse free themselves, without waiting for the
garbage collector; freed memory is handed back to the system (glibc's
malloc_trim) at most once per TRIM_DELAY; and `emotion serve` with the mock
model, in a subprocess, returns to its resident memory (read from /proc)
after attacks repeated 3 times: zero-window (50 calls of a 1.3 MB image
whose answers are never read), header-block (header blocks of 1 MiB
CONTINUATIONs that never end) and Rapid Reset (streams of 64 KiB reset at
once, until GOAWAY).
"""

from __future__ import annotations

import asyncio
import gc
import io
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import StartServer
from grpclib.client import Channel
from h2.errors import ErrorCodes
from PIL import Image
from support.guarding import reset_until_goaway, send_frames, unfinished_header_block, zero_window
from support.h2client import Outcome, RawConnection, framed
from support.sample_models import GatedModel
from support.served import resident, start_serving, worker_pids

from emotion import PipelineStub, Request
from emotion.transport import heap
from emotion.transport.connection import H2ServerConnection
from emotion.transport.heap import TRIM_DELAY
from emotion.transport.protocol import ServerProtocol

MiB = 1024 * 1024
#: How far above its RSS before the attacks the worker may end up.
MARGIN = 10 * MiB
#: An attack on a server's port; it returns once its connections are closed.
Attack = Callable[[int], None]


def noise_jpeg(width: int = 1200, height: int = 960) -> bytes:
    """A JPEG of about 1.3 MB: noise, which JPEG cannot compress away."""
    pixels = random.Random(0).randbytes(width * height * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def zero_window_attack(message: bytes) -> Attack:
    """2 connections, 25 calls each with ``message``, until every answer waits on a zero window."""

    def attack(port: int) -> None:
        connections = [zero_window(port, message, 25) for _ in range(2)]
        for connection in connections:
            streams = [connection.outcome(s) for s in range(1, 50, 2)]

            def answered(streams: list[Outcome] = streams) -> bool:
                return all(s.answered for s in streams)

            connection.until(answered, timeout=30)
            assert [(s.answered, s.data, s.status) for s in streams] == [(True, b"", None)] * 25
        for connection in connections:
            connection.close()

    return attack


def at_once(connections: int, one: Callable[[], tuple[int | None, object]]) -> None:
    """``one`` on ``connections`` connections at once; each ends with GOAWAY ENHANCE_YOUR_CALM."""
    with ThreadPoolExecutor(connections) as pool:
        ends = list(pool.map(lambda _: one(), range(connections)))
    assert [code for code, _ in ends] == [ErrorCodes.ENHANCE_YOUR_CALM] * connections


def header_block_attack(connections: int) -> Attack:
    """Connections each sending HEADERS and 1 MiB CONTINUATIONs (the largest frame allowed)."""
    block = unfinished_header_block(4, MiB)

    def attack(port: int) -> None:
        at_once(connections, lambda: send_frames(port, block))

    return attack


def rapid_reset_attack(connections: int) -> Attack:
    """Connections each opening streams with 64 KiB of body and resetting them, until GOAWAY."""
    body = framed(b"\x0a" + bytes(64 * 1024))

    def attack(port: int) -> None:
        def one() -> tuple[int | None, int]:
            read, goaway = reset_until_goaway(port, body, 5000)
            return goaway, read

        at_once(connections, one)

    return attack


async def attacked(worker: int, port: int, attack: Attack) -> int:
    """The worker's peak RSS while ``attack`` runs."""
    peak = resident(worker)
    running = asyncio.ensure_future(asyncio.to_thread(attack, port))
    while not running.done():
        peak = max(peak, resident(worker))
        await asyncio.sleep(0.05)
    await running
    return peak


async def settled(worker: int, below: int, timeout: float = 10) -> int:
    """The worker's RSS once it is under ``below`` or ``timeout`` has passed."""
    deadline = time.monotonic() + timeout
    now = resident(worker)
    while now >= below and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = resident(worker)
    return now


ATTACKS: dict[str, Callable[[], Attack]] = {
    "zero-window": lambda: zero_window_attack(framed(bytes(Request(image=noise_jpeg())))),
    # Each connection left 1-1.5 MiB (header-block) or 0.5-1 MiB (Rapid Reset) in
    # the worker until a full collection, which a worker runs rarely.
    "header-block": lambda: header_block_attack(16),
    "rapid-reset": lambda: rapid_reset_attack(12),
}


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.subprocess
async def test_attacks_repeated_leave_the_worker_as_it_was(name: str) -> None:
    attack = ATTACKS[name]()
    image = noise_jpeg()
    served = await start_serving(
        "--port",
        "0",
        "--model",
        "emotion.models.mock:MockModel",
        "--workers",
        "1",
        "--inference-processes",
        "1",
        "--log-level",
        "warning",
    )
    try:
        (worker,) = worker_pids(served.process.pid)
        # Not an attack first, which would leave the heap at its size: calls
        # that any server gets, whose first run may keep something (code
        # paths run once, the link to the inference process at working size).
        channel = Channel("127.0.0.1", served.port)
        for _ in range(4):
            await PipelineStub(channel).run_pipeline(Request(image=image), timeout=30)
        channel.close()
        await asyncio.sleep(TRIM_DELAY + 1)
        before = resident(worker)
        rounds = []
        for _ in range(3):
            peak = await attacked(worker, served.port, attack)
            rounds.append((peak, await settled(worker, before + MARGIN)))
    finally:
        served.process.terminate()
        await asyncio.wait_for(served.process.wait(), 30)

    shown = ", ".join(f"peak {peak / MiB:.0f} then {after / MiB:.0f}" for peak, after in rounds)
    assert all(after < before + MARGIN for _, after in rounds), (
        f"worker RSS {before / MiB:.0f} MiB before the attacks; {shown} MiB"
    )


def requests_alive() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is Request)


async def test_calls_cancelled_with_their_connection_free_their_requests_at_once(
    start_server: StartServer, jpeg: bytes
) -> None:
    model = GatedModel()
    server = await start_server(model, threads=1)
    message = framed(bytes(Request(image=jpeg)))
    gc.collect()  # what earlier tests left
    before = requests_alive()  # held elsewhere in the suite (test parameters, say)
    gc.disable()  # freed here by reference counting alone, or not at all
    try:

        def three_calls() -> None:
            connection = RawConnection(server.port)
            for _ in range(3):  # one in the model, two waiting for it
                connection.send_whole(connection.open(connection.headers()), message)
            model.entered.wait(10)
            connection.close()

        await asyncio.to_thread(three_calls)
        for _ in range(50):
            if requests_alive() == before and not server.admission.admitted:
                break
            await asyncio.sleep(0.02)
        left = requests_alive() - before
    finally:
        gc.enable()
        model.gate.set()

    assert (left, server.admission.admitted) == (0, 0)


async def test_trims_asked_for_together_are_one_trim() -> None:
    done = heap.trims_done()
    for _ in range(5):  # five connections closing at once
        heap.trim_soon()
    await asyncio.sleep(TRIM_DELAY / 2)
    assert heap.trims_done() == done
    await asyncio.sleep(TRIM_DELAY)
    assert heap.trims_done() == done + (1 if heap.trim() else 0)


def alive(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if type(o) is kind)


@pytest.mark.parametrize("name", ["header-block", "rapid-reset"])
async def test_connections_closed_for_abuse_are_freed_at_once_and_trimmed(
    start_server: StartServer, name: str
) -> None:
    server = await start_server()
    assert server._grpc is not None
    attack = header_block_attack(2) if name == "header-block" else rapid_reset_attack(2)
    trims = heap.trims_done()
    gc.collect()  # what earlier tests left
    gc.disable()  # freed here by reference counting alone, or not at all
    try:
        await asyncio.to_thread(attack, server.port)
        for _ in range(100):  # the server closes a second after its GOAWAY
            if not server._grpc.connections_open:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        left = (alive(ServerProtocol), alive(H2ServerConnection))
    finally:
        gc.enable()
    await asyncio.sleep(TRIM_DELAY + 0.5)  # each received over a MiB: its end asks for a trim

    assert (server._grpc.connections_open, left) == (0, (0, 0))
    assert heap.trims_done() > trims or not heap.trim()
