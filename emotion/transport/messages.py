"""Reading one request message of a call: its size checked before its body is read, in time.

And sending an answer, counted against the connection's unread-buffer cap
while it waits for the client's flow-control window.

A message being read is held in memory whole (grpclib gives the flow-control
window back as the bytes arrive), so what a worker buffers at once is bounded
by a :class:`ReceiveBudget`, and a message must arrive in a time its size
allows (:class:`Patience`): a client that sends slowly, or stops, is cut off
instead of holding its buffer and its stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from grpclib.server import Stream

from emotion.transport.connection import H2ServerConnection

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


class SlowMessage(Exception):
    """A request message did not arrive in the time its size allows."""


class ReceivingFull(Exception):
    """Other requests' messages being received fill the worker's buffer; retry with backoff."""


@dataclass(frozen=True)
class Patience:
    """How long a message may take: ``grace`` seconds, plus one per ``rate`` bytes of it.

    The first message of a call must start (its 5-byte prefix) within
    ``grace`` seconds of the call; later messages of a stream may come when
    they like, but each, once started, must finish in time.
    """

    grace: float
    rate: int = 64 * 1024

    def allowed(self, length: int) -> float:
        return self.grace + length / self.rate


class ReceiveBudget:
    """Bytes of request messages a worker holds while they arrive, at most ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    @contextlib.contextmanager
    def take(self, length: int) -> Iterator[None]:
        """Hold ``length`` bytes while a message is read, or raise ReceivingFull."""
        if self.used and self.used + length > self.limit:
            raise ReceivingFull(
                f"server is busy: {self.used} bytes of other requests are arriving; "
                "retry with backoff"
            )
        self.used += length
        try:
            yield
        finally:
            self.used -= length


async def _within(read: Awaitable[bytes], seconds: float | None, late: str) -> bytes:
    """``await read``, raising SlowMessage(``late``) after ``seconds``.

    asyncio.timeout, not wait_for: in Python 3.11 wait_for returns the result
    of a read that completes as the call is cancelled (a reset arriving with
    the data), and the cancelled call would go on.
    """
    if seconds is None:
        return await read
    try:
        async with asyncio.timeout(seconds):
            return await read
    except TimeoutError:
        raise SlowMessage(late) from None


async def receive_message(
    stream: Stream[T, Any],
    message_type: type[T],
    *,
    limit: int,
    patience: Patience | None = None,
    first: bool = False,
    budget: ReceiveBudget | None = None,
) -> T | None:
    """The next message of a call, refusing one longer than ``limit`` before reading it.

    With ``patience``, raises SlowMessage when the message is late (for the
    ``first`` of a call, also when it does not start in time); with
    ``budget``, ReceivingFull when its body would not fit.

    grpclib's own ``Stream.recv_message`` reads whatever length a client
    announces into memory. This reads the 5-byte gRPC prefix first; the body
    of a refused message is never read, and HTTP/2 flow control keeps the
    client from sending more than one window (4 MiB) of it. The rest is as
    grpclib does it: the ``RecvMessage`` event goes to the server's listeners
    (``grpclib.events.listen``), which may replace the message, and the
    call's and connection's statistics (channelz's) are kept.
    """
    h2_stream = stream._stream
    started = time.monotonic()
    wait = patience.grace if patience is not None and first else None
    try:
        prefix = await _within(
            h2_stream.recv_data(5), wait, f"no request message came within {wait}s of the call"
        )
    except AssertionError:  # grpclib's Buffer: the call ended before 5 bytes came
        raise MalformedMessage("the call ended inside a message's 5-byte prefix") from None
    if not prefix:
        return None
    if len(prefix) < 5:  # grpclib's Buffer gives what there is when the call ends
        raise MalformedMessage("the call ended inside a message's 5-byte prefix")
    flag, length = struct.unpack(">BI", prefix)
    if flag == 1:
        raise CompressedMessage("compressed messages are not supported; send them uncompressed")
    if flag != 0:
        raise MalformedMessage(f"a message's compression flag is {flag}, not 0 or 1")
    if length > limit:
        raise MessageTooLarge(length, limit)
    allowed, late = None, ""
    if patience is not None:
        total = patience.allowed(length)
        allowed = total - (time.monotonic() - started if first else 0.0)
        late = (
            f"the {length}-byte request message did not arrive within {total:.1f}s "
            f"({patience.grace:g}s, plus 1s per {patience.rate} bytes)"
        )
    with budget.take(length) if budget is not None else contextlib.nullcontext():
        try:
            body = await _within(h2_stream.recv_data(length), allowed, late)
        except AssertionError:
            raise MalformedMessage(f"the call ended inside a {length}-byte message") from None
        if len(body) < length:  # grpclib's Buffer gives what there is when the call ends
            raise MalformedMessage(f"the call ended inside a {length}-byte message")
    decoded: T = stream._codec.decode(body, message_type)
    dispatched: tuple[T] = await stream._dispatch.recv_message(decoded)
    stream._messages_received += 1
    h2_stream.connection.messages_received += 1
    h2_stream.connection.last_message_received = time.monotonic()
    return dispatched[0]


async def send_message(stream: Stream[Any, Any], message: Any, size: int) -> None:
    """``stream.send_message(message)``, its ``size`` bytes counted as unsent meanwhile.

    grpclib writes an answer only as the client's flow-control window allows:
    for a client that reads nothing (a zero window) it waits, held in memory
    but not in the transport's buffer. Counted on the connection, it counts
    against what the connection may leave unread (emotion.transport.protocol).
    An answer sent at once is counted and uncounted without a pause between.
    """
    h2 = stream._stream.connection._connection
    if not isinstance(h2, H2ServerConnection):  # a grpclib server of someone else's
        await stream.send_message(message)
        return
    h2.unsent_answers += size
    try:
        await stream.send_message(message)
    finally:
        h2.unsent_answers -= size
