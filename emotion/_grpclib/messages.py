"""Reading one request message of a call, with its size checked before its body is read."""

from __future__ import annotations

import struct
import time
from typing import Any, TypeVar

from grpclib.server import Stream

T = TypeVar("T")


class MessageTooLarge(Exception):
    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"request message is {length} bytes; this server accepts at most {limit}")
        self.length = length
        self.limit = limit


class MalformedMessage(Exception):
    """The gRPC framing of a request is broken; the message says how."""


class CompressedMessage(Exception):
    """The client compressed a message; this server does not decompress."""


async def receive_message(stream: Stream[T, Any], message_type: type[T], *, limit: int) -> T | None:
    """The next message of a call, refusing one longer than ``limit`` before reading it.

    grpclib's own ``Stream.recv_message`` reads whatever length a client
    announces into memory. This reads the 5-byte gRPC prefix first; the body
    of a refused message is never read, and HTTP/2 flow control keeps the
    client from sending more than one window (4 MiB) of it. The rest is as
    grpclib does it: the ``RecvMessage`` event goes to the server's listeners
    (``grpclib.events.listen``), which may replace the message, and the
    call's and connection's statistics (channelz's) are kept.
    """
    h2_stream = stream._stream
    try:
        prefix = await h2_stream.recv_data(5)
    except AssertionError:  # grpclib's Buffer: the call ended before 5 bytes came
        raise MalformedMessage("the call ended inside a message's 5-byte prefix") from None
    if not prefix:
        return None
    flag, length = struct.unpack(">BI", prefix)
    if flag == 1:
        raise CompressedMessage("compressed messages are not supported; send them uncompressed")
    if flag != 0:
        raise MalformedMessage(f"a message's compression flag is {flag}, not 0 or 1")
    if length > limit:
        raise MessageTooLarge(length, limit)
    try:
        body = await h2_stream.recv_data(length)
    except AssertionError:
        raise MalformedMessage(f"the call ended inside a {length}-byte message") from None
    decoded: T = stream._codec.decode(body, message_type)
    dispatched: tuple[T] = await stream._dispatch.recv_message(decoded)
    stream._messages_received += 1
    h2_stream.connection.messages_received += 1
    h2_stream.connection.last_message_received = time.monotonic()
    return dispatched[0]
