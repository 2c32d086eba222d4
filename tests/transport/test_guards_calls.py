"""Call and worker guards under attack: slow bodies, unread answers, floods, the backlog.

As in tests/transport/test_guards.py: the attack cut off, a legitimate call answered
meanwhile; then the policies alone, on a clock of their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from conftest import StartServer
from grpclib.client import Channel
from grpclib.const import Status
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import PingFrame, SettingsFrame
from support.guarding import legitimate, send_frames, zero_window
from support.h2client import Outcome, RawConnection, framed
from support.sample_models import CrowdModel

from emotion import PipelineStub, Request, Server
from emotion.config import ConnectionLimits, Limits
from emotion.transport.guards import Abuse, PrematureResets, Rate

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


async def test_answers_waiting_on_a_zero_window_count_against_the_unread_buffer_cap(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    server = await start_server(CrowdModel())
    message = framed(bytes(Request(image=jpeg)))

    def unread(calls: int) -> bool:
        """Whether the server closes a connection that leaves ``calls`` 1.2 MB answers unread."""
        connection = zero_window(server.port, message, calls)
        try:
            streams = [connection.outcome(s) for s in range(1, 2 * calls, 2)]
            connection.until(lambda: all(s.answered for s in streams), timeout=10)
            assert [(s.answered, s.data, s.status) for s in streams] == [(True, b"", None)] * calls
            connection.h2.ping(b"12345678")  # anything it reads has the server look
            connection.sock.sendall(connection.h2.data_to_send())
            connection.wait_closed(1)
            return connection.closed
        finally:
            connection.close()

    assert await asyncio.to_thread(unread, 3) is False  # 3.7 MB waiting: under 4 MiB
    assert await asyncio.to_thread(unread, 4) is True
    await legitimate(server, connect, jpeg)


# --- PING and SETTINGS floods, connections per worker, the backlog, closed handlers -----------


def _control_flood(port: int, frame: bytes, count: int) -> tuple[ErrorCodes | int | None, bool]:
    return send_frames(port, [frame] * count)


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


@pytest.mark.subprocess
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
