"""grpclib's server, extended with what a graceful shutdown needs.

grpclib can only stop listening and cancel every call in one step, and it
never closes client connections: since Python 3.12 its ``wait_closed()``
then waits for clients to hang up. This subclass separates the steps and
ends connections with an HTTP/2 GOAWAY. It leans on grpclib internals
(``_server``, ``_protocol_factory``, ``H2Protocol.connection``), which is
why grpclib is pinned to one version and these paths are covered by tests
on every supported Python.
"""

from __future__ import annotations

import socket
import weakref
from typing import TYPE_CHECKING, Any

import betterproto2
import grpclib.server
from google.protobuf.message_factory import GetMessageClass
from grpclib.config import Configuration
from grpclib.encoding.proto import ProtoCodec
from grpclib.protocol import H2Protocol

if TYPE_CHECKING:
    from collections.abc import Collection

    from grpclib._typing import IServable


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


class GrpcServer(grpclib.server.Server):
    def __init__(
        self, handlers: Collection[IServable], *, config: Configuration | None = None
    ) -> None:
        super().__init__(handlers, config=config, codec=StrictCodec())
        self._protocols: weakref.WeakSet[H2Protocol] = weakref.WeakSet()

    def _protocol_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()
        self._protocols.add(protocol)
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
