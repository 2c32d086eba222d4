"""grpclib's server, adapted where its defaults cost correctness or speed.

- Graceful shutdown: grpclib can only stop listening and cancel every call
  in one step, and never closes client connections (since Python 3.12 its
  ``wait_closed()`` then waits for clients to hang up). GrpcServer separates
  the steps and ends connections with an HTTP/2 GOAWAY.
- Strict decoding: betterproto parses malformed messages leniently.
- Speed: a larger HTTP/2 frame size, and no hex dump of every frame.

This leans on grpclib and h2 internals (``_server``, ``_protocol_factory``,
``H2Protocol.connection``, the module-level ``H2Connection`` name, hyperframe's
``_raw_data_repr``): their versions are pinned, and tests cover each path on
every supported Python.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import random
import socket
import struct
import time
import weakref
from asyncio import BaseTransport
from typing import TYPE_CHECKING, Any, TypeVar

import betterproto2
import grpclib.protocol
import grpclib.server
import hyperframe.frame
from google.protobuf.message_factory import GetMessageClass
from grpclib.config import Configuration
from grpclib.encoding.proto import ProtoCodec
from grpclib.protocol import H2Protocol
from grpclib.server import Handler
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame

from emotion.config import ConnectionAge

if TYPE_CHECKING:
    from collections.abc import Collection

    from grpclib._typing import IServable

T = TypeVar("T")


#: Largest HTTP/2 frame clients may send. At h2's default (16 KiB) a 160 kB
#: image arrives as ten DATA frames, and each costs a pass through h2 and
#: grpclib in Python; at 1 MiB it is one. Measured: 6% less server CPU per
#: call on a 160 kB JPEG (benchmarks/README.md).
MAX_FRAME_SIZE = 1024 * 1024


class _H2Connection(H2Connection):
    """h2's connection, announcing a larger frame size in its very first SETTINGS.

    Changing it later (update_settings) races: h2 applies the client's ACK
    only after the data it arrived with, and rejects a large frame that
    follows the ACK in the same read.
    """

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config=config)
        self.local_settings[SettingCodes.MAX_FRAME_SIZE] = MAX_FRAME_SIZE
        self.local_settings.acknowledge()
        self.max_inbound_frame_size = MAX_FRAME_SIZE


_IDLE_CHECK = 0.1
_GOAWAY_LINGER = 1.0


log = logging.getLogger(__name__)


class _Protocol(H2Protocol):
    def __init__(self, *args: Any, age: ConnectionAge | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._age = age
        self._retire_by = 0.0
        self._gone_away = False

    def connection_made(self, transport: BaseTransport) -> None:
        self._transport = transport
        # grpclib builds its h2 connection from this module-level name; the
        # swap lasts one synchronous call, so no other connection sees it.
        names = vars(grpclib.protocol)
        names["H2Connection"] = _H2Connection
        try:
            super().connection_made(transport)
        finally:
            names["H2Connection"] = H2Connection
        if self._age is not None:
            loop = asyncio.get_running_loop()
            jitter = random.uniform(0.9, 1.1)  # noqa: S311 - spreading reconnects, not security
            loop.call_later(self._age.limit * jitter, self._retire)

    def _retire(self) -> None:
        """Announce GOAWAY, let running calls finish (up to the grace), then close."""
        assert self._age is not None
        loop = asyncio.get_running_loop()
        connection = self.connection
        if connection.is_closing():
            return
        h2 = connection._connection
        if not self._retire_by:
            self._retire_by = loop.time() + self._age.grace
            # Written by hand: h2's close_connection() would also stop the
            # calls below last_stream_id from finishing. Conforming clients
            # open no more calls here and reconnect for new ones.
            goaway = GoAwayFrame(0)
            goaway.last_stream_id = h2.highest_inbound_stream_id
            goaway.error_code = 0
            self._transport.write(goaway.serialize())  # type: ignore[attr-defined]
        if h2.open_inbound_streams and loop.time() < self._retire_by:
            loop.call_later(_IDLE_CHECK, self._retire)
            return
        if h2.open_inbound_streams:
            log.info("closing a connection past its age and grace with calls still running")
        # Closing at once could reset the connection (unread data makes the
        # kernel send RST) and lose the GOAWAY: give the client a moment.
        self._gone_away = True
        loop.call_later(_GOAWAY_LINGER, self._transport.close)

    def data_received(self, data: bytes) -> None:
        if self._gone_away:
            return  # calls sent across our GOAWAY: the client retries them elsewhere
        try:
            super().data_received(data)
        except UnicodeDecodeError:
            # h2 reads header bytes as ASCII, as gRPC requires; a peer that
            # sends others is not speaking gRPC. Drop it without a traceback.
            log.info("closing a connection that sent non-ASCII header bytes")
            self._transport.close()


def _short_hex(data: bytes | None) -> str:
    """hyperframe's frame-data repr, without first converting all of the data to hex."""
    if not data:
        return "None"
    text = binascii.hexlify(data[:10]).decode("ascii")
    return f"<hex:{text}...>" if len(data) > 10 else f"<hex:{text}>"


# h2 formats every received frame for a trace log, eagerly, even when nothing
# logs: repr(DataFrame) hex-encodes the whole payload, then keeps 20 digits.
# That was 4% of the server's CPU on 160 kB images. Same text, less work.
original_raw_data_repr = hyperframe.frame._raw_data_repr
hyperframe.frame._raw_data_repr = _short_hex


class StrictCodec(ProtoCodec):
    """Protobuf decoding that refuses malformed messages.

    betterproto reads leniently: a length-delimited field that runs past the
    end of the message is cut short, so a broken request would reach the
    model as a shorter image. protobuf's C parser checks the encoding first.
    """

    def decode(self, data: bytes, message_type: type[Any]) -> Any:
        if issubclass(message_type, betterproto2.Message):
            GetMessageClass(getattr(message_type, "DESCRIPTOR")).FromString(data)  # noqa: B009
        return super().decode(data, message_type)


class MessageTooLarge(Exception):
    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"request message is {length} bytes; this server accepts at most {limit}")
        self.length = length
        self.limit = limit


class MalformedMessage(Exception):
    """The gRPC framing of a request is broken; the message says how."""


class CompressedMessage(Exception):
    """The client compressed a message; this server does not decompress."""


async def receive_message(
    stream: grpclib.server.Stream[T, Any], message_type: type[T], *, limit: int
) -> T | None:
    """The next message of a call, refusing one longer than ``limit`` before reading it.

    grpclib's own ``recv_message`` reads whatever length a client announces
    into memory. This reads the 5-byte gRPC prefix first; the body of a
    refused message is never read, and HTTP/2 flow control keeps the client
    from sending more than one window (4 MiB) of it.
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
    message: T = stream._codec.decode(body, message_type)
    # The statistics grpclib's recv_message keeps.
    stream._messages_received += 1
    stream._stream.connection.messages_received += 1
    stream._stream.connection.last_message_received = time.monotonic()
    return message


class GrpcServer(grpclib.server.Server):
    def __init__(
        self,
        handlers: Collection[IServable],
        *,
        config: Configuration | None = None,
        connection_age: ConnectionAge | None = None,
    ) -> None:
        super().__init__(handlers, config=config, codec=StrictCodec())
        self._protocols: weakref.WeakSet[H2Protocol] = weakref.WeakSet()
        self._connection_age = connection_age
        #: Connections accepted since the start.
        self.connections_accepted = 0

    def _protocol_factory(self) -> H2Protocol:
        self.__gc_step__()
        handler = Handler(self._mapping, self._codec, self._status_details_codec, self.__dispatch__)
        self._handlers.add(handler)
        protocol = _Protocol(handler, self._config, self._h2_config, age=self._connection_age)
        self._protocols.add(protocol)
        self.connections_accepted += 1
        return protocol

    def stop_listening(self) -> None:
        """Refuse new connections; calls on open connections go on."""
        if self._server is not None:
            self._server.close()

    def accepted_sockets(self) -> list[socket.socket]:
        sockets = []
        for protocol in list(self._protocols):
            connection = getattr(protocol, "connection", None)
            if connection is not None and not connection.is_closing():
                sock = connection._transport.get_extra_info("socket")
                if sock is not None:
                    sockets.append(sock)
        return sockets

    def close_connections(self) -> None:
        """Send GOAWAY on every open connection and close it."""
        for protocol in list(self._protocols):
            connection = getattr(protocol, "connection", None)
            if connection is None or connection.is_closing():
                continue
            connection._connection.close_connection()
            connection.flush()
            connection.close()
