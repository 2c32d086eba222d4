"""A bare HTTP/2 client (the h2 library over a blocking socket) for calls no gRPC client makes.

It sends gRPC framing by hand: lying length prefixes, bodies streamed from a
generator, and watches what the server does with its flow-control window.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import StreamClosedError


@dataclass
class Outcome:
    """What came back for one call."""

    status: str | None = None
    message: str | None = None
    reset: bool = False
    data: bytes = b""
    sent: int = 0
    frames: int = 0


@dataclass
class RawConnection:
    port: int
    settings: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        self.h2.initiate_connection()
        self.sock.sendall(self.h2.data_to_send())
        self._outcomes: dict[int, Outcome] = {}
        while SettingsWanted(self):
            self._pump()

    def close(self) -> None:
        self.sock.close()

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
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("server closed the connection")
        for event in self.h2.receive_data(data):
            if isinstance(event, RemoteSettingsChanged):
                self.settings.update({k: v.new_value for k, v in event.changed_settings.items()})
            elif isinstance(event, DataReceived):
                self._outcomes[event.stream_id].data += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, (ResponseReceived, TrailersReceived)):
                # An error may come as "trailers only": status in the first HEADERS.
                headers = {str(k): str(v) for k, v in event.headers}
                outcome = self._outcomes[event.stream_id]
                if "grpc-status" in headers:
                    outcome.status = headers["grpc-status"]
                    outcome.message = headers.get("grpc-message")
            elif isinstance(event, StreamReset):
                self._outcomes[event.stream_id].reset = True
            elif isinstance(event, (StreamEnded, WindowUpdated)):
                pass
        self.sock.sendall(self.h2.data_to_send())


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
