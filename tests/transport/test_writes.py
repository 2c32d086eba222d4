"""A connection's writes: gathered in one loop pass, sent once, in order, never lost on close."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from emotion.transport.writes import CoalescingTransport


class Recording(asyncio.Protocol):
    """The peer's side: everything it receives, and when the connection ended."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.arrived = asyncio.Event()
        self.ended = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.received += data
        self.arrived.set()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.ended.done():
            self.ended.set_result(None)


class Sends:
    """asyncio's transport, counting the writes that reach it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.transport.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.transport, name)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[CoalescingTransport, Sends, Recording]]:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    _, peer = await loop.connect_accepted_socket(Recording, theirs)
    sends = Sends(transport)
    yield CoalescingTransport(sends, loop), sends, peer  # type: ignore[arg-type]
    transport.abort()
    await asyncio.sleep(0)


async def received(peer: Recording, size: int) -> bytes:
    async with asyncio.timeout(5):
        while len(peer.received) < size:
            peer.arrived.clear()
            await peer.arrived.wait()
    return bytes(peer.received)


async def test_writes_of_one_loop_pass_go_out_as_one_send_in_order(
    pair: tuple[CoalescingTransport, Sends, Recording],
) -> None:
    coalescing, sends, peer = pair

    coalescing.write(b"headers ")
    coalescing.write(bytearray(b"message "))
    coalescing.write(memoryview(b"trailers"))
    assert sends.writes == []
    assert coalescing.get_write_buffer_size() == 24

    assert await received(peer, 24) == b"headers message trailers"
    assert sends.writes == [b"headers message trailers"]


async def test_writes_of_later_passes_are_sent_separately(
    pair: tuple[CoalescingTransport, Sends, Recording],
) -> None:
    coalescing, sends, peer = pair

    coalescing.write(b"first")
    await asyncio.sleep(0.01)
    coalescing.write(b"second")
    coalescing.write(b"")

    assert await received(peer, 11) == b"firstsecond"
    assert sends.writes == [b"first", b"second"]


async def test_close_sends_what_was_written_before_it(
    pair: tuple[CoalescingTransport, Sends, Recording],
) -> None:
    coalescing, _, peer = pair

    coalescing.write(b"goaway")
    coalescing.close()

    async with asyncio.timeout(5):
        await peer.ended
    assert bytes(peer.received) == b"goaway"
    assert coalescing.is_closing()


async def test_abort_drops_what_was_not_sent_and_later_writes_go_nowhere(
    pair: tuple[CoalescingTransport, Sends, Recording],
) -> None:
    coalescing, sends, peer = pair

    coalescing.write(b"never sent")
    coalescing.abort()
    coalescing.write(b"after the end")
    async with asyncio.timeout(5):
        await peer.ended
    await asyncio.sleep(0.01)

    assert bytes(peer.received) == b""
    assert sends.writes == []
    assert coalescing.get_write_buffer_size() == 0
