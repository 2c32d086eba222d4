"""grpclib's server with the steps of a graceful shutdown apart, and our protocol per connection.

grpclib can only stop listening and cancel every call in one step, and never
closes client connections (since Python 3.12 its ``wait_closed()`` then waits
for clients to hang up). GrpcServer separates the steps and ends connections
with an HTTP/2 GOAWAY.
"""

from __future__ import annotations

import inspect
import weakref
from typing import TYPE_CHECKING, Any

import grpclib.server
from grpclib.config import Configuration
from grpclib.server import Handler

from emotion.codec import ProtobufCodec
from emotion.config import ConnectionLimits
from emotion.transport.cap import ConnectionCap
from emotion.transport.handler import CallHandler
from emotion.transport.protocol import ServerProtocol

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Collection

    from grpclib._typing import IServable
    from grpclib.protocol import H2Protocol

    from emotion.config import ConnectionAge


#: grpclib's ``Server._protocol_factory`` (0.4.9) as :func:`normalized_source`
#: gives it: the body that ``GrpcServer._protocol_factory`` repeats. A test
#: compares it with the installed grpclib, so an upgrade that changes it fails.
GRPCLIB_PROTOCOL_FACTORY = """\
def _protocol_factory(self) -> H2Protocol:
self.__gc_step__()
handler = Handler(
self._mapping, self._codec, self._status_details_codec,
self.__dispatch__,
)
self._handlers.add(handler)
return H2Protocol(handler, self._config, self._h2_config)"""


#: Connections the kernel queues for accept() on the listening socket.
BACKLOG = 1024


def normalized_source(function: Callable[..., Any]) -> str:
    """The source of ``function`` without indentation, blank lines or comments."""
    lines = (line.split("#", 1)[0].strip() for line in inspect.getsource(function).splitlines())
    return "\n".join(line for line in lines if line)


class GrpcServer(grpclib.server.Server):
    """grpclib's Server speaking through :class:`ServerProtocol`, with shutdown in steps."""

    def __init__(
        self,
        handlers: Collection[IServable],
        *,
        config: Configuration | None = None,
        connection_age: ConnectionAge | None = None,
        limits: ConnectionLimits | None = None,
        on_cap: Callable[[str], None] | None = None,
    ) -> None:
        """``on_cap`` is told what happens at the connection cap (see emotion.transport.cap)."""
        super().__init__(handlers, config=config, codec=ProtobufCodec())
        self._protocols: weakref.WeakSet[ServerProtocol] = weakref.WeakSet()
        self._connection_age = connection_age
        self._limits = limits or ConnectionLimits()
        #: The connections open (past TLS), and what to close at the cap.
        self.cap = ConnectionCap(self._limits.max_connections, on_event=on_cap)
        #: Connections accepted since the start.
        self.connections_accepted = 0

    def _protocol_factory(self) -> H2Protocol:
        # GRPCLIB_PROTOCOL_FACTORY, with our handler, protocol and their bookkeeping.
        self.__gc_step__()
        handler = CallHandler(
            self._mapping,
            self._codec,
            self._status_details_codec,
            self.__dispatch__,
            on_closed=self._handler_closed,
        )
        self._handlers.add(handler)
        protocol = ServerProtocol(
            handler,
            self._config,
            self._h2_config,
            age=self._connection_age,
            limits=self._limits,
            cap=self.cap,
        )
        self._protocols.add(protocol)
        self.connections_accepted += 1
        return protocol

    @property
    def connections_open(self) -> int:
        """Connections open now (past TLS, not yet lost), those closing included."""
        return len(self.cap)

    @property
    def handlers(self) -> int:
        """grpclib handlers alive: one per open connection, and closed ones with calls ending."""
        return len(self._handlers)

    async def start(self, *args: Any, backlog: int = BACKLOG, **kwargs: Any) -> None:
        """grpclib's start, with a backlog of :data:`BACKLOG`.

        grpclib's default is 100, and asyncio calls ``listen(backlog)`` on a
        socket it is given, replacing the backlog it was listening with: a
        burst of new connections would wait for the kernel to retry them.
        """
        await super().start(*args, backlog=backlog, **kwargs)

    def _handler_closed(self, handler: Handler) -> None:
        """A closed connection's calls have all ended: forget its handler now, not at a gc step."""
        self._handlers.discard(handler)

    def stop_listening(self) -> None:
        """Refuse new connections; calls on open connections go on."""
        if self._server is not None:
            self._server.close()

    def accepted_sockets(self) -> list[socket.socket]:
        """The sockets of the client connections still open."""
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
