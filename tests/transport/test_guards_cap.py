"""The connection cap under attack: connections that say nothing make room for new ones.

At --max-connections a new connection is served and the least useful one is
closed: one that has not finished its HTTP/2 handshake (the oldest first),
then the one idle longest; never one with a call in flight. With a call in
flight on every connection, the new one is refused.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

import pytest
from conftest import StartServer
from grpclib.client import Channel
from h2.errors import ErrorCodes
from support.guarding import PREFACE, legitimate
from support.h2client import RawConnection, framed
from support.scraping import scrape

from emotion import PipelineStub, Request, Server
from emotion.config import ConnectionLimits
from emotion.contract import RUN_PIPELINE_PATH


def _closed(sock: socket.socket, wait: float = 2.0) -> bool:
    """Whether the server closed ``sock``: read what it sent until EOF, or ``wait`` without one."""
    sock.settimeout(wait)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def _held(connection: RawConnection) -> bool:
    """Whether the server left ``connection`` open, without a GOAWAY."""
    connection.drain(wait=0.1)
    return connection.goaway is None and not connection.closed


async def _until(done: Callable[[], bool], timeout: float = 5) -> None:
    ends = asyncio.get_running_loop().time() + timeout
    while not done():
        assert asyncio.get_running_loop().time() < ends, "timed out"
        await asyncio.sleep(0.02)


def _in_flight(connection: RawConnection, message: bytes) -> int:
    """A call whose body has started and not ended: in flight until :func:`_finish`."""
    stream = connection.open(connection.headers())
    connection.h2.send_data(stream, message[:100])
    connection.sock.sendall(connection.h2.data_to_send())
    return stream


def _finish(connection: RawConnection, stream: int, message: bytes) -> str | None:
    connection.h2.send_data(stream, message[100:], end_stream=True)
    connection.sock.sendall(connection.h2.data_to_send())
    return connection.finish(stream).status


async def test_silent_and_preface_only_connections_at_the_cap_make_room_for_new_ones(
    start_server: StartServer,
    connect: Callable[[Server], Channel],
    jpeg: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="emotion.transport.cap")
    server = await start_server(connections=ConnectionLimits(max_connections=20), metrics_port=0)
    assert server.metrics_port is not None
    client = PipelineStub(connect(server))
    await client.run_pipeline(Request(image=jpeg), timeout=10)  # a client already calling

    def attack() -> list[socket.socket]:
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(13)]
        for _ in range(6):
            held.append(socket.create_connection(("127.0.0.1", server.port)))
            held[-1].sendall(PREFACE)
        return held

    held = await asyncio.to_thread(attack)
    await _until(lambda: server._grpc is not None and server._grpc.connections_open == 20)
    # Ten new connections at once, each calling: each makes room.
    await asyncio.gather(*(legitimate(server, connect, jpeg) for _ in range(10)))
    await client.run_pipeline(Request(image=jpeg), timeout=10)
    closed = await asyncio.gather(*(asyncio.to_thread(_closed, sock, 0.5) for sock in held))

    def logged() -> list[logging.LogRecord]:
        return [record for record in caplog.records if record.name == "emotion.transport.cap"]

    await _until(lambda: bool(logged()), timeout=5)
    samples = await asyncio.to_thread(scrape, server.metrics_port)
    for sock in held:
        sock.close()

    assert closed == [True] * 10 + [False] * 9  # the oldest silent ones
    assert samples[("emotion_connections_evicted_total", (("reason", "handshake"),))] == 10
    assert samples[("emotion_connections_evicted_total", (("reason", "idle"),))] == 0
    assert samples[("emotion_connections_refused_total", ())] == 0
    [record] = logged()  # once for the burst
    assert "closed 10 connections before their HTTP/2 handshake ended" in record.message


async def test_at_the_cap_the_connection_idle_longest_makes_room(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    server = await start_server(connections=ConnectionLimits(max_connections=3))
    message = framed(bytes(Request(image=jpeg)))
    a, b, c = [await asyncio.to_thread(RawConnection, server.port) for _ in range(3)]
    outcome = await asyncio.to_thread(a.call, RUN_PIPELINE_PATH, iter([message]))
    assert outcome.status == "0"  # a: opened first, but called last

    await legitimate(server, connect, jpeg)  # d: b makes room, idle since it opened
    await asyncio.to_thread(b.wait_closed, 5)
    kept_after_d = [await asyncio.to_thread(_held, x) for x in (a, c)]
    await legitimate(server, connect, jpeg)  # e: c makes room (a and d called later)
    await asyncio.to_thread(c.wait_closed, 5)
    again = await asyncio.to_thread(a.call, RUN_PIPELINE_PATH, iter([message]))
    for connection in (a, b, c):
        connection.close()

    assert (b.goaway, b.closed) == (ErrorCodes.NO_ERROR, True)  # GOAWAY first: clients reconnect
    assert kept_after_d == [True, True]
    assert (c.goaway, c.closed) == (ErrorCodes.NO_ERROR, True)
    assert again.status == "0"


async def test_a_connection_with_a_call_in_flight_never_makes_room(
    start_server: StartServer, jpeg: bytes
) -> None:
    server = await start_server(connections=ConnectionLimits(max_connections=3))
    assert server._grpc is not None
    message = framed(bytes(Request(image=jpeg)))

    a, b, c = [await asyncio.to_thread(RawConnection, server.port) for _ in range(3)]
    a_call = await asyncio.to_thread(_in_flight, a, message)  # a: the oldest, but busy
    c_call = await asyncio.to_thread(_in_flight, c, message)
    await _until(lambda: server.calls.active == 2)
    d = await asyncio.to_thread(RawConnection, server.port)  # b, idle, makes room
    await asyncio.to_thread(b.wait_closed, 5)
    d_call = await asyncio.to_thread(_in_flight, d, message)
    await _until(lambda: server.calls.active == 3)
    e = await asyncio.to_thread(RawConnection, server.port)  # every one busy: refused
    await asyncio.to_thread(e.wait_closed, 5)
    statuses = [
        await asyncio.to_thread(_finish, connection, stream, message)
        for connection, stream in ((a, a_call), (c, c_call), (d, d_call))
    ]
    for connection in (a, b, c, d, e):
        connection.close()

    assert (b.goaway, b.closed) == (ErrorCodes.NO_ERROR, True)
    assert (e.goaway, e.closed) == (ErrorCodes.NO_ERROR, True)
    assert statuses == ["0", "0", "0"]
    assert server._grpc.cap.events == {"idle": 1, "refused": 1}
