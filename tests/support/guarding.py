"""What the attack tests share: the server's memory, a legitimate call, raw frames and sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from grpclib.client import Channel
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import ContinuationFrame, HeadersFrame, SettingsFrame

from emotion import PipelineStub, Request, Server
from support.h2client import RawConnection

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


def zero_window(port: int, message: bytes, calls: int) -> RawConnection:
    """A connection that gives answers no flow-control window and sends ``calls`` calls whole.

    SETTINGS_INITIAL_WINDOW_SIZE 0, and no WINDOW_UPDATE for what the server
    sends: each answer's HEADERS come, its DATA waits. Returned open.
    """
    connection = RawConnection(port)
    connection.acknowledge = False
    connection.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 0})
    connection.sock.sendall(connection.h2.data_to_send())
    for _ in range(calls):
        connection.send_whole(connection.open(connection.headers()), message)
    return connection


def reset_until_goaway(port: int, body: bytes, limit: int) -> tuple[int, ErrorCodes | int | None]:
    """Rapid Reset on one connection until the server sends GOAWAY: streams it read, and its code.

    Each stream gets HEADERS, ``body`` (as the windows allow) and RST_STREAM
    at once. The streams are counted by the GOAWAY's last stream id, not by
    what was sent: the client, in the server's process, may send hundreds
    more before the GOAWAY reaches it (tiny ones, once the windows are spent).
    """
    connection = RawConnection(port)
    try:
        sent = 0
        while connection.goaway is None and not connection.closed and sent < limit:
            connection.reset_early(body)
            sent += 1
        connection.wait_closed(5)
        last = connection.goaway_last_stream
        return (sent if last is None else (last + 1) // 2), connection.goaway
    finally:
        connection.close()


def unfinished_header_block(frames: int, size: int) -> list[bytes]:
    """HEADERS without END_HEADERS, then ``frames`` CONTINUATIONs of ``size`` bytes: never ended."""
    headers = HeadersFrame(1, b"\x82" + bytes(1023))  # :method GET, then padding the decoder
    continuation = ContinuationFrame(1, bytes(size)).serialize()
    return [headers.serialize(), *[continuation] * frames]


def send_frames(port: int, frames: list[bytes]) -> tuple[ErrorCodes | int | None, bool]:
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


def silent(port: int, send: bytes, timeout: float = 10) -> tuple[float, bytes]:
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


def goaway_code(received: bytes) -> int | None:
    """The error code of the first GOAWAY frame in ``received``, if any."""
    while len(received) >= 9:
        length = int.from_bytes(received[:3], "big")
        if received[3] == 0x7:
            return int.from_bytes(received[9 + 4 : 9 + 8], "big")
        received = received[9 + length :]
    return None
