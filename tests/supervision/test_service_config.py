"""deploy/grpc-service-config.json: grpcio callers ride through a worker's death.

A worker killed with calls in flight fails them with UNAVAILABLE; the
service config's retry policy sends them again, on a new connection to a
worker that lives. Without it, grpcio retries nothing the server saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from support.grpcio_client import call
from support.served import Served, start_serving, worker_pids

#: Every test here starts processes (emotion serve, its workers, inference processes).
pytestmark = pytest.mark.subprocess

SERVICE_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "grpc-service-config.json"
CALLERS = 4
#: How long a caller waits after a failed call, as a program that logs its
#: errors does. One that calls again at once can start grpcio's reconnect
#: while the kernel still closes the killed worker's listener: on a loaded
#: machine grpcio 1.72 (the lowest env) then failed every call for the next
#: 60 s, where grpcio 1.85 reconnected after its 1 s backoff.
PAUSE_AFTER_FAILURE = 0.05


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    served = await start_serving(
        "--port", "0", "--workers", "2", "--inference-processes", "1",
        "--model", "emotion.models.mock:MockModel",
    )  # fmt: skip
    yield served
    for pid in worker_pids(served.process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    served.process.kill()
    await served.process.wait()


def connected_workers(served: Served) -> set[int]:
    """The workers holding an established client connection on the served port."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state, inode = line.split()[1], line.split()[3], line.split()[9]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == served.port:
                inodes.add(f"socket:[{inode}]")
    holders = set()
    for pid in worker_pids(served.process.pid):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) in inodes:
                    holders.add(pid)
    return holders


def call_through_a_kill(
    served: Served, jpeg: bytes, options: list[tuple[str, str]]
) -> tuple[int, list[str]]:
    """Calls in a loop from several threads while the worker serving them is killed.

    Returns how many calls were answered after the kill, and each failure's
    status and message.
    """
    answered = 0
    failures: list[str] = []
    stop = threading.Event()

    def caller() -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                call(channel, jpeg)
            except grpc.RpcError as exc:
                failures.append(f"{exc.code().name}: {exc.details()}")
                time.sleep(PAUSE_AFTER_FAILURE)
            else:
                answered += 1

    with grpc.insecure_channel(f"127.0.0.1:{served.port}", options=options) as channel:
        call(channel, jpeg)
        (serving,) = connected_workers(served)
        threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        before = answered
        os.kill(serving, signal.SIGKILL)
        # Until calls are answered again (a reconnect takes grpcio about a
        # second, longer on a busy machine), at least 1.5 s, at most 15.
        time.sleep(1.5)
        give_up = time.monotonic() + 15
        while answered - before < 2 * CALLERS and time.monotonic() < give_up:
            time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join()
    assert before > 0
    return answered - before, failures


async def test_with_the_service_config_no_call_fails_when_a_worker_dies(
    served: Served, jpeg: bytes
) -> None:
    options = [("grpc.service_config", SERVICE_CONFIG.read_text())]

    answered, failures = await asyncio.to_thread(call_through_a_kill, served, jpeg, options)

    assert failures == []
    assert answered > 0
    await served.read_until("restarting")


async def test_without_it_the_calls_in_flight_fail(served: Served, jpeg: bytes) -> None:
    answered, failures = await asyncio.to_thread(call_through_a_kill, served, jpeg, [])

    # On a new connection, to the other worker.
    assert answered > 0, sorted(set(failures))

    # The callers call back to back: some are in flight when the worker dies
    # (all four, in every run here), and grpcio by itself retries only calls
    # that never left it.
    assert failures
    assert all(failure.startswith("UNAVAILABLE") for failure in failures), failures
