"""A bare HTTP/2 client (the h2 library over a blocking socket) for calls no gRPC client makes.

It sends gRPC framing by hand: lying length prefixes, bodies streamed from a
generator, and watches what the server does with its flow-control window.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from grpclib.metadata import USER_AGENT
from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError

#: A unary call's request headers as grpclib sends them, as bytes (what h2 is given).
REQUEST_HEADERS = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/emotion.v1.Pipeline/RunPipeline"),
    (b":authority", b"127.0.0.1:50051"),
    (b"te", b"trailers"),
    (b"content-type", b"application/grpc"),
    (b"user-agent", USER_AGENT.encode()),
]


@dataclass
class Outcome:
    """What came back for one call."""

    status: str | None = None
    message: str | None = None
    reset: bool = False
    #: The error code of the server's RST_STREAM, if it reset the stream.
    reset_code: ErrorCodes | int | None = None
    data: bytes = b""
    sent: int = 0
    frames: int = 0
    #: Whether the answer's first HEADERS came (a DATA frame may still wait for window).
    answered: bool = False


@dataclass
class RawConnection:
    port: int
    settings: dict[int, int] = field(default_factory=dict)
    #: The error code of the server's GOAWAY, once one came.
    goaway: ErrorCodes | int | None = None
    #: The last stream its GOAWAY says the server took: what the server did,
    #: whatever this client had sent before it read the GOAWAY.
    goaway_last_stream: int | None = None
    #: Whether to give the server's DATA back to its windows (WINDOW_UPDATE) as it is read.
    acknowledge: bool = True

    def __post_init__(self) -> None:
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        self.h2.initiate_connection()
        self.sock.sendall(self.h2.data_to_send())
        self._outcomes: dict[int, Outcome] = {}
        self._unread = b""
        self.closed = False
        while SettingsWanted(self):
            self._pump()

    def close(self) -> None:
        self.sock.close()

    def headers(self, path: str = "/emotion.v1.Pipeline/RunPipeline") -> list[tuple[str, str]]:
        return [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", f"127.0.0.1:{self.port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]

    def open(self, headers: list[tuple[str, str]]) -> int:
        """Send HEADERS for a new stream; its body is up to the caller."""
        stream = self.h2.get_next_available_stream_id()
        self._outcomes[stream] = Outcome()
        self.h2.send_headers(stream, headers)
        self.sock.sendall(self.h2.data_to_send())
        return stream

    def outcome(self, stream: int) -> Outcome:
        return self._outcomes[stream]

    def until(self, done: Callable[[], bool], timeout: float = 10) -> None:
        """Read what the server sends until ``done()``, or the timeout, or the connection's end."""
        self.sock.settimeout(timeout)
        try:
            while not done() and not self.closed:
                self._pump()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self.sock.settimeout(30)

    def finish(self, stream: int) -> Outcome:
        """Read until ``stream`` has its status or was reset."""
        outcome = self._outcomes[stream]
        while outcome.status is None and not outcome.reset:
            self._pump()
        return outcome

    def send_whole(self, stream: int, body: bytes) -> None:
        """Send ``body`` and END_STREAM on ``stream`` as the server's windows allow.

        Reads what the server sends while it waits for window (its
        WINDOW_UPDATEs); stops early if the stream ends first.
        """
        outcome = self._outcomes[stream]
        sent = 0
        while sent < len(body) and outcome.status is None and not outcome.reset:
            window = self.h2.local_flow_control_window(stream)
            room = min(window, self.h2.max_outbound_frame_size, len(body) - sent)
            if room <= 0:
                self._pump()
                continue
            try:
                self.h2.send_data(
                    stream, body[sent : sent + room], end_stream=sent + room == len(body)
                )
            except StreamClosedError:
                return
            sent += room
            self.sock.sendall(self.h2.data_to_send())

    def reset_early(self, body: bytes) -> int:
        """Rapid Reset: HEADERS, as much of ``body`` as the windows allow, then RST_STREAM.

        Reads whatever the server sent meanwhile without waiting. Returns the
        bytes of body sent.
        """
        stream = self.h2.get_next_available_stream_id()
        self._outcomes[stream] = Outcome()
        self.h2.send_headers(stream, self.headers())
        room = min(len(body), self.h2.local_flow_control_window(stream))
        sent = 0
        while sent < room:
            chunk = body[sent : sent + min(room - sent, self.h2.max_outbound_frame_size)]
            self.h2.send_data(stream, chunk)
            sent += len(chunk)
        self.h2.reset_stream(stream, ErrorCodes.CANCEL)
        self.sock.sendall(self.h2.data_to_send())
        self.drain()
        return sent

    def drain(self, wait: float = 0.0) -> None:
        """Read what the server sent, waiting up to ``wait`` seconds for the first bytes."""
        self.sock.settimeout(wait)
        try:
            while not self.closed:
                self._pump()
                self.sock.settimeout(0)
        except (BlockingIOError, TimeoutError, ConnectionError):
            pass
        finally:
            self.sock.settimeout(30)

    def wait_closed(self, timeout: float = 10) -> None:
        """Read until the server closes the connection (or ``timeout`` passes)."""
        self.sock.settimeout(timeout)
        try:
            while not self.closed:
                self._pump()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self.sock.settimeout(30)

    def call(
        self, path: str, body: Iterator[bytes], metadata: dict[str, str] | None = None
    ) -> Outcome:
        """Send ``body`` (the already framed gRPC message bytes) as far as the server lets us."""
        stream = self.h2.get_next_available_stream_id()
        outcome = self._outcomes[stream] = Outcome()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", f"127.0.0.1:{self.port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *(metadata or {}).items(),
        ]
        self.h2.send_headers(stream, headers)
        self.sock.sendall(self.h2.data_to_send())
        pending = b""
        chunks = iter(body)
        while outcome.status is None and not outcome.reset:
            if not pending:
                pending = next(chunks, b"")
                if not pending:
                    self.h2.end_stream(stream)
                    self.sock.sendall(self.h2.data_to_send())
                    break
            window = min(self.h2.local_flow_control_window(stream), self.h2.max_outbound_frame_size)
            if window <= 0:
                self._pump()  # wait for WINDOW_UPDATE, trailers or RST_STREAM
                continue
            chunk, pending = pending[:window], pending[window:]
            try:
                self.h2.send_data(stream, chunk)
            except StreamClosedError:
                break
            outcome.sent += len(chunk)
            outcome.frames += 1
            self.sock.sendall(self.h2.data_to_send())
        while outcome.status is None and not outcome.reset:
            self._pump()
        return outcome

    def _pump(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            raise ConnectionError("server closed the connection")
        for event in self._events(data):
            if isinstance(event, ConnectionTerminated):
                self.goaway = event.error_code
                self.goaway_last_stream = event.last_stream_id
                continue
            stream_id = getattr(event, "stream_id", 0)
            if stream_id and stream_id not in self._outcomes:
                self._outcomes[stream_id] = Outcome()
            if isinstance(event, RemoteSettingsChanged):
                self.settings.update({k: v.new_value for k, v in event.changed_settings.items()})
            elif isinstance(event, DataReceived):
                self._outcomes[event.stream_id].data += event.data
                if self.acknowledge:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, (ResponseReceived, TrailersReceived)):
                # An error may come as "trailers only": status in the first HEADERS.
                headers = {str(k): str(v) for k, v in event.headers}
                outcome = self._outcomes[event.stream_id]
                outcome.answered = True
                if "grpc-status" in headers:
                    outcome.status = headers["grpc-status"]
                    outcome.message = headers.get("grpc-message")
            elif isinstance(event, StreamReset):
                self._outcomes[event.stream_id].reset = True
                self._outcomes[event.stream_id].reset_code = event.error_code
            elif isinstance(event, (StreamEnded, WindowUpdated)):
                pass
        self.sock.sendall(self.h2.data_to_send())

    def _events(self, data: bytes) -> list[Event]:
        """h2's events for ``data``, fed a frame at a time: after a GOAWAY, h2 refuses
        the frames that follow it, and would drop the GOAWAY's own event with them."""
        self._unread += data
        events: list[Event] = []
        while len(self._unread) >= 9 and self.h2.state_machine.state is not ConnectionState.CLOSED:
            size = 9 + int.from_bytes(self._unread[:3], "big")
            if len(self._unread) < size:
                break
            frame, self._unread = self._unread[:size], self._unread[size:]
            try:
                events += self.h2.receive_data(frame)
            except ProtocolError:
                break
        return events


def SettingsWanted(connection: RawConnection) -> bool:
    return not connection.settings


def framed(message: bytes, *, declared: int | None = None, flag: int = 0) -> bytes:
    """A gRPC length-prefixed message; ``declared`` may lie about its length."""
    length = len(message) if declared is None else declared
    return bytes([flag]) + length.to_bytes(4, "big") + message


def zeros(total: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """``total`` zero bytes in chunks, without ever holding them all."""
    block = bytes(chunk)
    while total > 0:
        yield block[: min(chunk, total)]
        total -= chunk
