"""A worker's memory after attacks: what they held is freed with their connections.

Calls cancelled with their connection free their requests at once, without
waiting for the garbage collector.
"""

from __future__ import annotations

import asyncio
import gc

from conftest import StartServer
from h2client import RawConnection, framed
from sample_models import GatedModel

from emotion import Request


def requests_alive() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is Request)


async def test_calls_cancelled_with_their_connection_free_their_requests_at_once(
    start_server: StartServer, jpeg: bytes
) -> None:
    model = GatedModel()
    server = await start_server(model, threads=1)
    message = framed(bytes(Request(image=jpeg)))
    gc.collect()  # what earlier tests left
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
            if not requests_alive() and not server.admission.admitted:
                break
            await asyncio.sleep(0.02)
        left = requests_alive()
    finally:
        gc.enable()
        model.gate.set()

    assert (left, server.admission.admitted) == (0, 0)
