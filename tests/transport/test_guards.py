"""Connection guards under attack: a raw h2 client abuses HTTP/2 while legitimate calls go on.

Each test shows the attack cut off, the server's memory bounded (the server
runs in this process: its RSS is ours), and a legitimate call answered
meanwhile, on another connection and, where it applies, on the same one.
tests/transport/test_guards_calls.py attacks the calls; this file, the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from conftest import StartServer
from grpclib.client import Channel
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import HeadersFrame
from support.guarding import (
    PREFACE,
    SETTINGS,
    MiB,
    Peak,
    goaway_code,
    legitimate,
    reset_until_goaway,
    send_frames,
    silent,
    unfinished_header_block,
)
from support.h2client import RawConnection, framed

from emotion import PipelineStub, Request, Server
from emotion.config import ConnectionLimits
from emotion.contract import RUN_PIPELINE_PATH

# --- Rapid Reset (CVE-2023-44487) ---------------------------------------------------------


def _taken(connection: RawConnection) -> int:
    """Streams the server took before its GOAWAY, by the last stream id it names.

    Not what the client sent: a client on a busy machine sends on until it
    reads the GOAWAY, however soon the server sent it.
    """
    assert connection.goaway_last_stream is not None
    return (connection.goaway_last_stream + 1) // 2  # client streams are odd: 1, 3, 5, ...


async def test_rapid_reset_gives_the_window_back_then_gets_goaway(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    server = await start_server(connections=ConnectionLimits(max_premature_resets=100))
    body = framed(b"\x0a" + bytes(64 * 1024))  # 64 KiB of a message, never finished

    def below_then_over() -> tuple[str | None, int, ErrorCodes | int | None]:
        connection = RawConnection(server.port)
        try:
            # 90 streams of 64 KiB: more than the connection's 4 MiB receive window, were it kept.
            for _ in range(90):
                connection.reset_early(body)
            megabyte = bytes(Request(image=jpeg + bytes(MiB)))
            after = connection.call(RUN_PIPELINE_PATH, iter([framed(megabyte)]))
            sent = 90
            while connection.goaway is None and not connection.closed and sent < 1000:
                connection.reset_early(body)
                sent += 1
            connection.wait_closed(5)
            return after.status, _taken(connection), connection.goaway
        finally:
            connection.close()

    status, taken, goaway = await asyncio.to_thread(below_then_over)

    assert status == "0"  # a 1 MB call on that connection, after 90 resets
    assert goaway == ErrorCodes.ENHANCE_YOUR_CALM
    # 90 resets, the call, then the 11 that make 101 premature of 102 streams.
    assert taken == 102
    await legitimate(server, connect, jpeg)


async def test_rapid_reset_on_many_connections_keeps_memory_bounded(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    server = await start_server()
    body = framed(b"\x0a" + bytes(64 * 1024))

    async with Peak() as memory:
        attacks = [asyncio.to_thread(reset_until_goaway, server.port, body, 5000) for _ in range(4)]
        for _ in range(3):  # each attacker reconnects after its GOAWAY
            results = await asyncio.gather(*attacks, legitimate(server, connect, jpeg))
            attacks = [
                asyncio.to_thread(reset_until_goaway, server.port, body, 5000) for _ in range(4)
            ]
            for taken, goaway in results[:4]:  # type: ignore[misc]
                assert goaway == ErrorCodes.ENHANCE_YOUR_CALM
                assert taken == 101  # the default --max-premature-resets is 100
        for attack in attacks:
            attack.close()

    assert memory.grown < 60 * MiB, f"RSS grew {memory.grown / MiB:.0f} MiB"
    await legitimate(server, connect, jpeg)


# --- Concurrent streams: advertised, and refused one by one over the limit ------------------


async def test_streams_over_the_advertised_limit_are_refused_and_the_others_answered(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    limits = ConnectionLimits(max_concurrent_streams=10, max_header_list_size=8192)
    server = await start_server(connections=limits)
    message = framed(bytes(Request(image=jpeg)))

    def flood() -> tuple[dict[int, int], list[str | None], list[ErrorCodes | int | None]]:
        connection = RawConnection(server.port)
        try:
            advertised = dict(connection.settings)
            # Ignore what the server advertised: h2 would keep us under it.
            connection.h2.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 1000
            connection.h2.remote_settings.acknowledge()
            waiting = [connection.open(connection.headers()) for _ in range(10)]
            over = [connection.open(connection.headers()) for _ in range(40)]
            connection.until(lambda: all(connection.outcome(s).reset for s in over))
            refused = [connection.outcome(stream).reset_code for stream in over]
            for stream in waiting:
                connection.h2.send_data(stream, message, end_stream=True)
            connection.sock.sendall(connection.h2.data_to_send())
            answered = [connection.finish(stream).status for stream in waiting]
            return advertised, answered, refused
        finally:
            connection.close()

    advertised, answered, refused = await asyncio.to_thread(flood)

    assert advertised[SettingCodes.MAX_CONCURRENT_STREAMS] == 10
    assert advertised[SettingCodes.MAX_HEADER_LIST_SIZE] == 8192
    assert refused == [ErrorCodes.REFUSED_STREAM] * 40
    assert answered == ["0"] * 10  # the calls under the limit went on, on the same connection
    await legitimate(server, connect, jpeg)


async def test_the_defaults_are_advertised(start_server: StartServer) -> None:
    server = await start_server()

    connection = await asyncio.to_thread(RawConnection, server.port)
    connection.close()

    assert connection.settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 100
    assert connection.settings[SettingCodes.MAX_HEADER_LIST_SIZE] == 16 * 1024


# --- Header blocks bounded as they arrive ---------------------------------------------------


async def test_a_header_block_that_never_ends_is_cut_off_at_the_header_list_limit(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    server = await start_server()
    # 4 MiB in frames of 64 KiB, made once: the client runs in this process too.
    block = unfinished_header_block(64, 64 * 1024)

    async with Peak() as memory:
        results = await asyncio.gather(
            *[asyncio.to_thread(send_frames, server.port, block) for _ in range(16)],
            legitimate(server, connect, jpeg),
        )

    for goaway, closed in results[:16]:  # type: ignore[misc]
        assert (goaway, closed) == (ErrorCodes.ENHANCE_YOUR_CALM, True)
    assert memory.grown < 40 * MiB, f"RSS grew {memory.grown / MiB:.0f} MiB"
    await legitimate(server, connect, jpeg)


async def test_a_complete_header_bomb_gets_goaway(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    server = await start_server()
    bomb = HeadersFrame(1, b"\x82" + bytes(200 * 1024))
    bomb.flags.add("END_HEADERS")

    goaway, closed = await asyncio.to_thread(send_frames, server.port, [bomb.serialize()])

    assert (goaway, closed) == (ErrorCodes.ENHANCE_YOUR_CALM, True)
    await legitimate(server, connect, jpeg)


# --- Handshake and idle timeouts ------------------------------------------------------------


async def test_connections_that_never_send_settings_are_closed(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    server = await start_server(connections=ConnectionLimits(handshake_timeout=0.5))

    nothing, preface, _ = await asyncio.gather(
        asyncio.to_thread(silent, server.port, b""),
        asyncio.to_thread(silent, server.port, PREFACE),
        legitimate(server, connect, jpeg),  # well past its handshake, and served
    )

    for seconds, received in (nothing, preface):
        assert 0.4 < seconds < 3
        assert goaway_code(received) == ErrorCodes.NO_ERROR
    await legitimate(server, connect, jpeg)


async def test_idle_connections_are_closed_and_busy_ones_kept(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    server = await start_server(connections=ConnectionLimits(max_connection_idle=0.5))
    stub = PipelineStub(connect(server))

    idle = asyncio.ensure_future(asyncio.to_thread(silent, server.port, PREFACE + SETTINGS))
    for _ in range(10):  # a call every 0.2 s: never idle long enough
        await stub.run_pipeline(Request(image=jpeg), timeout=10)
        await asyncio.sleep(0.2)
    busy_connections = server.connections_accepted
    seconds, received = await idle

    assert 0.4 < seconds < 3
    assert goaway_code(received) == ErrorCodes.NO_ERROR
    assert busy_connections == 2  # the idle one, and the busy one kept
