"""Connection guards under attack: a raw h2 client abuses HTTP/2 while legitimate calls go on.

Each test shows the attack cut off, the server's memory bounded (the server
runs in this process: its RSS is ours), and a legitimate call answered
meanwhile, on another connection and, where it applies, on the same one.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import StartServer
from grpclib.client import Channel
from grpclib.const import Status
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from h2client import Outcome, RawConnection, framed
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, SettingsFrame

from emotion import PipelineStub, Request, Server
from emotion._grpclib.guards import Abuse, PrematureResets, Rate
from emotion.config import ConnectionLimits, Limits
from emotion.contract import RUN_PIPELINE_PATH

MiB = 1024 * 1024
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = SettingsFrame(0).serialize()


def rss() -> int:
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Peak:
    """The highest RSS seen while the block runs, sampled every 20 ms."""

    def __init__(self) -> None:
        self.before = rss()
        self.peak = self.before
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss())
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> Peak:
        self._task = asyncio.ensure_future(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, rss())

    @property
    def grown(self) -> int:
        return self.peak - self.before


async def legitimate(server: Server, connect: Callable[[Server], Channel], jpeg: bytes) -> None:
    """One call on a connection of its own: it must be answered."""
    answer = await PipelineStub(connect(server)).run_pipeline(Request(image=jpeg), timeout=10)
    assert answer.response


# --- Rapid Reset (CVE-2023-44487) ---------------------------------------------------------


def _reset_until_goaway(port: int, body: bytes, limit: int) -> tuple[int, ErrorCodes | int | None]:
    """Reset streams on one connection until the server sends GOAWAY; how many it took."""
    connection = RawConnection(port)
    try:
        sent = 0
        while connection.goaway is None and not connection.closed and sent < limit:
            connection.reset_early(body)
            sent += 1
        connection.wait_closed(5)
        return sent, connection.goaway
    finally:
        connection.close()


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
            return after.status, sent, connection.goaway
        finally:
            connection.close()

    status, sent, goaway = await asyncio.to_thread(below_then_over)

    assert status == "0"  # a 1 MB call on that connection, after 90 resets
    assert goaway == ErrorCodes.ENHANCE_YOUR_CALM
    assert 100 <= sent <= 200
    await legitimate(server, connect, jpeg)


async def test_rapid_reset_on_many_connections_keeps_memory_bounded(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    server = await start_server()
    body = framed(b"\x0a" + bytes(64 * 1024))

    async with Peak() as memory:
        attacks = [
            asyncio.to_thread(_reset_until_goaway, server.port, body, 5000) for _ in range(4)
        ]
        for _ in range(3):  # each attacker reconnects after its GOAWAY
            results = await asyncio.gather(*attacks, legitimate(server, connect, jpeg))
            attacks = [
                asyncio.to_thread(_reset_until_goaway, server.port, body, 5000) for _ in range(4)
            ]
            for sent, goaway in results[:4]:  # type: ignore[misc]
                assert goaway == ErrorCodes.ENHANCE_YOUR_CALM
                assert sent < 1000
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


def _header_flood(port: int, frames: list[bytes]) -> tuple[ErrorCodes | int | None, bool]:
    """Send raw frames after the handshake; the server's GOAWAY code, and whether it closed."""
    connection = RawConnection(port)
    try:
        for frame in frames:
            try:
                connection.sock.sendall(frame)
            except OSError:  # closed under us: what it sent is read below
                break
            connection.drain()
            if connection.goaway is not None:
                break
        connection.wait_closed(5)
        return connection.goaway, connection.closed
    finally:
        connection.close()


def _unfinished_header_block(megabytes: int) -> list[bytes]:
    """HEADERS without END_HEADERS, then CONTINUATION frames of 64 KiB that never end it."""
    headers = HeadersFrame(1, b"\x82" + bytes(1023))  # :method GET, then padding the decoder
    continuations = [
        ContinuationFrame(1, bytes(64 * 1024)).serialize() for _ in range(16 * megabytes)
    ]
    return [headers.serialize(), *continuations]


async def test_a_header_block_that_never_ends_is_cut_off_at_the_header_list_limit(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    server = await start_server()
    block = _unfinished_header_block(4)  # 4 MiB, made once: the client runs in this process too

    async with Peak() as memory:
        results = await asyncio.gather(
            *[asyncio.to_thread(_header_flood, server.port, block) for _ in range(16)],
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

    goaway, closed = await asyncio.to_thread(_header_flood, server.port, [bomb.serialize()])

    assert (goaway, closed) == (ErrorCodes.ENHANCE_YOUR_CALM, True)
    await legitimate(server, connect, jpeg)


# --- Handshake and idle timeouts ------------------------------------------------------------


def _silent(port: int, send: bytes, timeout: float = 10) -> tuple[float, bytes]:
    """Connect, send ``send`` (maybe nothing), then only read: seconds until closed, bytes read."""
    started = time.monotonic()
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(send)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return time.monotonic() - started, received


def _goaway_code(received: bytes) -> int | None:
    """The error code of the first GOAWAY frame in ``received``, if any."""
    while len(received) >= 9:
        length = int.from_bytes(received[:3], "big")
        if received[3] == 0x7:
            return int.from_bytes(received[9 + 4 : 9 + 8], "big")
        received = received[9 + length :]
    return None


async def test_connections_that_never_send_settings_are_closed(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    server = await start_server(connections=ConnectionLimits(handshake_timeout=0.5))

    nothing, preface, _ = await asyncio.gather(
        asyncio.to_thread(_silent, server.port, b""),
        asyncio.to_thread(_silent, server.port, PREFACE),
        legitimate(server, connect, jpeg),  # well past its handshake, and served
    )

    for seconds, received in (nothing, preface):
        assert 0.4 < seconds < 3
        assert _goaway_code(received) == ErrorCodes.NO_ERROR
    await legitimate(server, connect, jpeg)


async def test_idle_connections_are_closed_and_busy_ones_kept(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    server = await start_server(connections=ConnectionLimits(max_connection_idle=0.5))
    stub = PipelineStub(connect(server))

    idle = asyncio.ensure_future(asyncio.to_thread(_silent, server.port, PREFACE + SETTINGS))
    for _ in range(10):  # a call every 0.2 s: never idle long enough
        await stub.run_pipeline(Request(image=jpeg), timeout=10)
        await asyncio.sleep(0.2)
    busy_connections = server.connections_accepted
    seconds, received = await idle

    assert 0.4 < seconds < 3
    assert _goaway_code(received) == ErrorCodes.NO_ERROR
    assert busy_connections == 2  # the idle one, and the busy one kept


# --- Slow bodies: no place in the queue until the message is in, and a time limit --------


async def test_slow_bodies_hold_no_place_and_are_cut_off_in_time(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    server = await start_server(threads=1, limits=Limits(max_queue=1, body_timeout=1.0))
    assert server.admission.capacity == 2

    def slow(count: int) -> tuple[list[Outcome], float]:
        connection = RawConnection(server.port)
        try:
            started = time.monotonic()
            streams = [connection.open(connection.headers()) for _ in range(count)]
            for stream in streams:  # 100 bytes of 10 kB, then nothing
                connection.h2.send_data(stream, framed(b"\x0a" + bytes(95), declared=10_000))
            connection.sock.sendall(connection.h2.data_to_send())
            outcomes = [connection.finish(stream) for stream in streams]
            return outcomes, time.monotonic() - started
        finally:
            connection.close()

    def silent() -> Outcome:
        connection = RawConnection(server.port)
        try:
            return connection.finish(connection.open(connection.headers()))
        finally:
            connection.close()

    attack = asyncio.ensure_future(asyncio.to_thread(slow, 20))
    quiet = asyncio.ensure_future(asyncio.to_thread(silent))
    await asyncio.sleep(0.3)
    for _ in range(3):  # while 21 calls wait for their bodies, with room for 2
        await legitimate(server, connect, jpeg)
    outcomes, seconds = await attack
    nothing = await quiet

    assert seconds < 5
    assert {(o.status, o.message) for o in outcomes} == {
        (
            str(Status.DEADLINE_EXCEEDED.value),
            "the 10000-byte request message did not arrive within 1.2s (1s, plus 1s per 65536 "
            "bytes)",
        )
    }
    assert (nothing.status, nothing.message) == (
        str(Status.DEADLINE_EXCEEDED.value),
        "no request message came within 1.0s of the call",
    )
    assert server.admission.admitted == 0


async def test_bodies_arriving_at_once_are_bounded_by_the_receive_budget(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    server = await start_server(limits=Limits(max_receiving=100_000, body_timeout=2.0))

    def two_halves() -> list[Outcome]:
        connection = RawConnection(server.port)
        try:
            streams = [connection.open(connection.headers()) for _ in range(2)]
            for stream in streams:
                connection.h2.send_data(stream, framed(b"\x0a" + bytes(95), declared=60_000))
                connection.sock.sendall(connection.h2.data_to_send())
                time.sleep(0.2)
            return [connection.finish(stream) for stream in streams]
        finally:
            connection.close()

    first, second = await asyncio.to_thread(two_halves)

    assert first.status == str(Status.DEADLINE_EXCEEDED.value)  # it never finished
    assert second.status == str(Status.RESOURCE_EXHAUSTED.value)
    assert second.message == (
        "server is busy: 60000 bytes of other requests are arriving; retry with backoff"
    )
    await legitimate(server, connect, jpeg)


# --- Answers the client will not read ---------------------------------------------------------


async def test_an_answer_the_client_will_not_read_ends_its_call_and_frees_its_place(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    server = await start_server(
        threads=1, limits=Limits(max_queue=1), connections=ConnectionLimits(send_timeout=1.0)
    )
    message = framed(bytes(Request(image=jpeg)))

    def never_read(count: int) -> tuple[list[Outcome], float]:
        connection = RawConnection(server.port)
        try:
            # A window of one byte per stream, never widened: no answer can be sent.
            connection.acknowledge = False
            connection.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1})
            connection.sock.sendall(connection.h2.data_to_send())
            started = time.monotonic()
            streams = [connection.open(connection.headers()) for _ in range(count)]
            for stream in streams:
                connection.h2.send_data(stream, message, end_stream=True)
            connection.sock.sendall(connection.h2.data_to_send())
            outcomes = [connection.finish(stream) for stream in streams]
            return outcomes, time.monotonic() - started
        finally:
            connection.close()

    attack = asyncio.ensure_future(asyncio.to_thread(never_read, 2))
    await asyncio.sleep(0.5)
    assert server.admission.admitted == 2  # both places held by answers nobody reads
    outcomes, seconds = await attack

    assert [(o.reset_code, o.status) for o in outcomes] == [(ErrorCodes.CANCEL, None)] * 2
    assert seconds < 4
    assert server.admission.admitted == 0
    await legitimate(server, connect, jpeg)


# --- PING and SETTINGS floods, connections per worker, the backlog, closed handlers -----------


def _control_flood(port: int, frame: bytes, count: int) -> tuple[ErrorCodes | int | None, bool]:
    return _header_flood(port, [frame] * count)


async def test_ping_and_settings_floods_get_goaway(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    server = await start_server()
    ping = PingFrame(0, b"12345678").serialize()
    settings = SettingsFrame(0, {SettingCodes.ENABLE_PUSH: 0}).serialize()

    for goaway, closed in await asyncio.gather(
        asyncio.to_thread(_control_flood, server.port, ping, 5000),
        asyncio.to_thread(_control_flood, server.port, settings, 5000),
    ):
        assert (goaway, closed) == (ErrorCodes.ENHANCE_YOUR_CALM, True)
    await legitimate(server, connect, jpeg)


async def test_a_few_pings_a_second_are_fine(start_server: StartServer) -> None:
    server = await start_server()

    def pings() -> tuple[ErrorCodes | int | None, bool]:
        connection = RawConnection(server.port)
        try:
            for _ in range(30):  # keepalive-like, well under the limit
                connection.h2.ping(b"12345678")
                connection.sock.sendall(connection.h2.data_to_send())
                connection.drain(wait=0.05)
            return connection.goaway, connection.closed
        finally:
            connection.close()

    assert await asyncio.to_thread(pings) == (None, False)


async def test_connections_over_the_limit_get_goaway_and_the_others_stay(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    server = await start_server(connections=ConnectionLimits(max_connections=3))

    held = await asyncio.gather(*[asyncio.to_thread(RawConnection, server.port) for _ in range(3)])
    over = await asyncio.to_thread(RawConnection, server.port)
    await asyncio.to_thread(over.wait_closed, 5)
    over.close()
    held[0].close()
    await asyncio.sleep(0.2)
    await legitimate(server, connect, jpeg)  # in the place of the one that left

    assert (over.goaway, over.closed) == (ErrorCodes.NO_ERROR, True)
    for connection in held[1:]:
        connection.drain()
        assert (connection.goaway, connection.closed) == (None, False)
        connection.close()


async def test_the_listening_backlog_is_1024(server: Server) -> None:
    listing = await asyncio.create_subprocess_exec(
        "ss", "-ltnH", f"sport = :{server.port}", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await listing.communicate()

    assert out.split()[2] == b"1024"  # Send-Q of a listening socket: its backlog


async def test_closed_connections_free_their_handlers_at_once(
    start_server: StartServer, jpeg: bytes
) -> None:
    server = await start_server()
    assert server._grpc is not None

    for _ in range(3):
        channel = Channel("127.0.0.1", server.port)
        await PipelineStub(channel).run_pipeline(Request(image=jpeg), timeout=10)
        channel.close()
    await asyncio.sleep(0.2)

    assert server._grpc.handlers == 0  # grpclib alone keeps them to every tenth connection


# --- The policies alone -----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_client_that_cancels_one_call_in_ten_never_trips_the_reset_guard() -> None:
    clock = Clock()
    resets = PrematureResets(100, clock=clock)

    for stream_id in range(1, 200_001, 2):  # 100,000 calls, 10,000 cancelled at once
        resets.opened(stream_id)
        clock.now += 0.001
        if stream_id % 20 == 1:
            resets.reset(stream_id)

    assert resets.premature == 10_000


def test_a_reset_after_a_second_is_not_premature() -> None:
    clock = Clock()
    resets = PrematureResets(1, clock=clock)

    for stream_id in (1, 3, 5):
        resets.opened(stream_id)
        clock.now += 1.0
        resets.reset(stream_id)

    assert resets.premature == 0


def test_the_rate_allows_its_burst_then_its_rate() -> None:
    clock = Clock()
    rate = Rate("PING", 10, burst=100, clock=clock)

    for _ in range(100):
        rate.spend()
    with pytest.raises(Abuse, match="more than 10 PING frames a second"):
        rate.spend()
    for _ in range(50):  # under ten a second goes on for ever
        clock.now += 0.125
        rate.spend()
