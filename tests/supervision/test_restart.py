"""`emotion serve` started again at once on the port it just gave up.

A server that closes its clients' connections (its drain does) leaves its
side of each in TIME_WAIT or FIN_WAIT2 for a minute; the next server on the
port must not count them as a server holding it.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from support.grpcio_client import call
from support.served import LAYOUTS, Served, free_port, kill_tree, start_serving

#: Every test here starts processes (emotion serve, its workers, inference processes).
pytestmark = pytest.mark.subprocess


@pytest.fixture
async def servers() -> AsyncIterator[list[Served]]:
    started: list[Served] = []
    yield started
    for served in started:
        await kill_tree(served)


async def serve(port: int, layout: str) -> Served:
    return await start_serving(
        "--port", str(port), *LAYOUTS[layout], "--model", "emotion.models.mock:MockModel"
    )


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_serve_starts_again_at_once_after_sigint_with_a_client_connected(
    servers: list[Served], jpeg: bytes, layout: str
) -> None:

    port = free_port()
    first = await serve(port, layout)
    servers.append(first)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        await asyncio.to_thread(call, channel, jpeg)

        first.process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(first.process.wait(), 30) == 0
        stopped = time.monotonic()
        second = await serve(port, layout)
        servers.append(second)
        took = time.monotonic() - stopped
        # The same client, its connection closed by the first server, calls the second.
        response = await asyncio.to_thread(call, channel, jpeg)

    assert len(response.response) == 1
    # Measured at 0.3-0.8 s here; the bound allows for a loaded machine.
    assert took < 10
