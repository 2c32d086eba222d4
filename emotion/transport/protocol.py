"""grpclib's HTTP/2 protocol for one server connection: our h2 connection, retirement, guards.

When a guard trips (or the client breaks the protocol), h2 has queued a
GOAWAY: the protocol sends it, cancels the connection's calls, stops reading,
and closes the connection a moment later, so that the client can read why.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from asyncio import Transport
from typing import TYPE_CHECKING, Any, cast

from grpclib.protocol import H2Protocol
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from hyperframe.frame import GoAwayFrame

from emotion.config import ConnectionLimits
from emotion.transport import heap
from emotion.transport.building import with_our_connection
from emotion.transport.connection import H2ServerConnection
from emotion.transport.guards import Stalls
from emotion.transport.handler import CallHandler
from emotion.transport.writes import CoalescingTransport

if TYPE_CHECKING:
    from asyncio import BaseTransport
    from collections.abc import Callable

    from emotion.config import ConnectionAge
    from emotion.transport.cap import ConnectionCap

_IDLE_CHECK = 0.1
_GOAWAY_LINGER = 1.0
#: What a connection may have waiting to be written, answers waiting for its
#: flow-control window included. grpclib writes answers only while asyncio's
#: transport is under its high-water mark (64 KiB), but h2 answers PINGs,
#: SETTINGS and resets whatever the buffer holds: a client that sends them
#: and reads nothing would grow it without end.
MAX_WRITE_BUFFER = 4 * 1024 * 1024
#: A connection that received this much (any frames: DATA, or a header block
#: of CONTINUATIONs) may have left as much free in the heap, which glibc
#: keeps: its end asks for a trim (emotion.transport.heap).
TRIM_AFTER = 1024 * 1024

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=16)
def _grpclib_connection_made(limits: ConnectionLimits) -> Callable[..., Any]:
    """grpclib's ``connection_made``, building an H2ServerConnection guarded by ``limits``."""
    factory = functools.partial(H2ServerConnection, limits=limits)
    return with_our_connection(H2Protocol.connection_made, factory)


class ServerProtocol(H2Protocol):
    """One client connection: our h2 connection, guarded, closed with GOAWAY past ``age``."""

    def __init__(
        self,
        *args: Any,
        age: ConnectionAge | None = None,
        limits: ConnectionLimits | None = None,
        cap: ConnectionCap | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._age = age
        self._limits = limits or ConnectionLimits()
        self._cap = cap
        self._retire_by = 0.0
        self._gone_away = False
        self._received = 0
        self._transport: CoalescingTransport | None = None
        # By name, so that one replaces its predecessor; all cancelled when the
        # connection is lost (a pending timer would keep this connection alive).
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._idle_since = 0.0
        self._stalls = Stalls(self._limits.send_timeout)

    def connection_made(self, transport: BaseTransport) -> None:
        self._transport = CoalescingTransport(
            cast(Transport, transport),  # as grpclib casts it
            asyncio.get_running_loop(),
        )
        _grpclib_connection_made(self._limits)(self, self._transport)
        self._idle_since = asyncio.get_running_loop().time()
        # Counted here, not when asyncio made the protocol: with TLS,
        # connection_lost comes only after connection_made.
        if self._cap is not None and not self._cap.admit(self):
            limit = self._limits.max_connections
            # At debug: a flood of connections would flood the log too (the cap logs bursts).
            self._go_away(f"refusing a connection: {limit} are open", logging.DEBUG)
            return
        self._later("handshake", self._limits.handshake_timeout, self._check_handshake)
        self._later("idle", self._limits.max_connection_idle, self._check_idle)
        self._later("sending", self._limits.send_timeout / 4, self._check_sending)
        if self._age is not None:
            jitter = random.uniform(0.9, 1.1)  # noqa: S311 - spreading reconnects, not security
            self._later("age", self._age.limit * jitter, self._retire)

    def connection_lost(self, exc: BaseException | None) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._cap is not None:
            self._cap.lost(self)
        super().connection_lost(exc)
        if self._received >= TRIM_AFTER:
            heap.trim_soon()

    @property
    def closing(self) -> bool:
        """For the cap: closed or closing already."""
        return self._gone_away or self.connection.is_closing()

    def standing(self) -> tuple[bool, float] | None:
        """For the cap: None with a call in flight; else whether handshaken, and idle since when."""
        if self.processor.streams:
            return None
        h2 = self.connection._connection
        assert isinstance(h2, H2ServerConnection)
        assert isinstance(self.handler, CallHandler)
        return h2.handshaken, max(self._idle_since, self.handler.last_ended)

    def evict(self) -> None:
        """Close to make room at the cap: GOAWAY first once handshaken, so the client reconnects."""
        h2 = self.connection._connection
        assert isinstance(h2, H2ServerConnection)
        if h2.handshaken:
            self._go_away("closing an idle connection at --max-connections", logging.DEBUG)
            return
        assert self._transport is not None
        self._gone_away = True
        self.handler.close()
        self._transport.close()

    def _later(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        self._timers[name] = asyncio.get_running_loop().call_later(delay, callback)

    def _check_handshake(self) -> None:
        """Close a connection that has not sent the HTTP/2 preface and SETTINGS in time.

        Without this, a connection that never speaks holds a socket and its
        buffers for as long as the client keeps it open.
        """
        h2 = self.connection._connection
        assert isinstance(h2, H2ServerConnection)
        if not h2.handshaken and not self._gone_away:
            timeout = self._limits.handshake_timeout
            self._go_away(f"closing a connection that sent no HTTP/2 SETTINGS within {timeout:g}s")

    def _check_idle(self) -> None:
        """GOAWAY and close once no call has been open for ``max_connection_idle`` seconds.

        A connection counts as busy when it reads data with a call open, or
        when the check finds one open (a call that runs long without
        reading): it closes between one and two periods after its last call.
        """
        if self._gone_away:
            return
        limit = self._limits.max_connection_idle
        now = asyncio.get_running_loop().time()
        if self.processor.streams:
            self._idle_since = now
        idle = now - self._idle_since
        if idle >= limit:
            self._go_away(f"closing a connection idle for {limit:g}s")
        else:
            self._later("idle", limit - idle, self._check_idle)

    def _check_sending(self) -> None:
        """End the calls whose answers have waited ``send_timeout`` for a client that reads nothing.

        An answer waits on its stream's flow-control window (the client sends
        no WINDOW_UPDATE) or on the connection's socket (the client does not
        read): either way its call holds its place in the queue, and its
        answer, for as long as the client likes. A stalled stream is reset
        and its call cancelled; a stalled socket ends the connection.
        """
        if self._gone_away or self.connection.is_closing():
            return
        if self._unread() > MAX_WRITE_BUFFER:  # answers that piled up after its last request
            self._drop(f"a client that left over {MAX_WRITE_BUFFER} bytes unread")
            return
        h2 = self.connection._connection
        stalled = []
        for stream_id, stream in list(self.processor.streams.items()):
            with contextlib.suppress(ProtocolError):  # closed in h2: not waiting to send
                if not stream.window_updated.is_set() and (
                    h2.local_flow_control_window(stream_id) <= 0
                ):
                    stalled.append(stream_id)
        if not self.connection.write_ready.is_set():
            stalled.append(0)
        for stream_id in self._stalls.update(stalled):
            if stream_id == 0:
                self._drop("a client that reads nothing")
                return
            self._end_stalled(stream_id)
        self._later("sending", self._limits.send_timeout / 4, self._check_sending)

    def _end_stalled(self, stream_id: int) -> None:
        stream = self.processor.streams.get(stream_id)
        if stream is None:
            return
        reason = f"the client read no answer for {self._limits.send_timeout:g}s"
        log.info("ending a call: %s", reason)
        with contextlib.suppress(ProtocolError):
            self.connection._connection.reset_stream(stream_id, ErrorCodes.CANCEL)
        self.connection.flush()
        # As grpclib does for a reset from the client: the call is cancelled,
        # and CallHandler releases its stream.
        stream.__terminated__(reason)
        self.handler.cancel(stream)

    def _drop(self, who: str) -> None:
        """Close a connection at once, discarding what it has not read: it will not read it."""
        log.info("closing a connection: %s", who)
        assert self._transport is not None
        self._gone_away = True
        self.handler.close()
        self._transport.abort()

    def _go_away(self, reason: str, level: int = logging.INFO) -> None:
        """GOAWAY(NO_ERROR), then close: the client did nothing wrong, and reconnects at need."""
        # A ProtocolError: h2 closed the connection already, and queued its GOAWAY.
        with contextlib.suppress(ProtocolError):
            self.connection._connection.close_connection()
        self._abandon(reason, level)

    def _retire(self) -> None:
        """Announce GOAWAY, let running calls finish (up to the grace), then close."""
        assert self._age is not None
        assert self._transport is not None
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
            self._transport.write(goaway.serialize())
            self._transport.flush()
        if h2.open_inbound_streams and loop.time() < self._retire_by:
            self._later("age", _IDLE_CHECK, self._retire)
            return
        if h2.open_inbound_streams:
            log.info("closing a connection past its age and grace with calls still running")
        # Closing at once could reset the connection (unread data makes the
        # kernel send RST) and lose the GOAWAY: give the client a moment.
        self._gone_away = True
        self._later("close", _GOAWAY_LINGER, self._transport.close)

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        if self._gone_away:
            return  # calls sent across our GOAWAY: the client retries them elsewhere
        try:
            super().data_received(data)
        except UnicodeDecodeError:
            # h2 reads header bytes as ASCII, as gRPC requires; a peer that
            # sends others is not speaking gRPC. Drop it without a traceback.
            log.info("closing a connection that sent non-ASCII header bytes")
            assert self._transport is not None
            self._transport.close()
            return
        h2 = self.connection._connection
        assert isinstance(h2, H2ServerConnection)
        if h2.failure is not None:
            self._abandon(f"closing a connection: {h2.failure}")
        elif self._unread() > MAX_WRITE_BUFFER:
            self._drop(f"a client that left over {MAX_WRITE_BUFFER} bytes unread")
        elif self.processor.streams:
            self._idle_since = asyncio.get_running_loop().time()

    def _unread(self) -> int:
        """Bytes written and not sent, and of answers waiting to be written (for window)."""
        h2 = self.connection._connection
        assert isinstance(h2, H2ServerConnection)
        assert self._transport is not None
        return self._transport.get_write_buffer_size() + h2.unsent_answers

    def _abandon(self, reason: str, level: int = logging.INFO) -> None:
        """Send what h2 queued (its GOAWAY), end every call, stop reading, close soon.

        Closing at once with unread data would make the kernel reset the
        connection, and the client might never read the GOAWAY.
        """
        if self.connection.is_closing():
            return  # closed already (grpclib closes on the client's GOAWAY)
        log.log(level, "%s", reason)
        assert self._transport is not None
        self._gone_away = True
        self.connection.flush()
        self._transport.flush()  # now, not a loop pass later: an attacker is still sending
        self.handler.close()  # cancels the calls: their streams and jobs are released
        if not self._transport.is_closing():
            self._transport.pause_reading()
        self._later("close", _GOAWAY_LINGER, self._transport.close)
