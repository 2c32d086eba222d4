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

import weakref
from typing import TYPE_CHECKING

import grpclib.server
from grpclib.config import Configuration
from grpclib.protocol import H2Protocol

if TYPE_CHECKING:
    from collections.abc import Collection

    from grpclib._typing import IServable


class GrpcServer(grpclib.server.Server):
    def __init__(
        self, handlers: Collection[IServable], *, config: Configuration | None = None
    ) -> None:
        super().__init__(handlers, config=config)
        self._protocols: weakref.WeakSet[H2Protocol] = weakref.WeakSet()

    def _protocol_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()
        self._protocols.add(protocol)
        return protocol

    def stop_listening(self) -> None:
        """Refuse new connections; calls on open connections go on."""
        if self._server is not None:
            self._server.close()

    def close_connections(self) -> None:
        """Send GOAWAY on every open connection and close it."""
        for protocol in list(self._protocols):
            connection = getattr(protocol, "connection", None)
            if connection is None or connection.is_closing():
                continue
            connection._connection.close_connection()
            connection.flush()
            connection.close()
