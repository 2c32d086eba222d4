"""h2's connection as the server uses it: 1 MiB frames, no hex dump of every DATA frame, guards.

The guards (emotion.transport.guards) see each frame here, as h2 reads it: a
guard that trips raises Abuse inside h2, which queues GOAWAY(ENHANCE_YOUR_CALM).
:meth:`H2ServerConnection.receive_data` keeps that error (and any other
protocol error) for the protocol, which sends the GOAWAY and closes the
connection; grpclib alone would close it without sending what h2 queued.
"""

from __future__ import annotations

import binascii
from typing import TYPE_CHECKING

from h2.config import H2Configuration
from h2.connection import ConnectionInputs, H2Connection, _decode_headers
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes
from h2.stream import StreamClosedBy
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
)

from emotion.config import ConnectionLimits
from emotion.transport.guards import Abuse, PrematureResets, Rate
from emotion.transport.header_blocks import AnswerEncoder

if TYPE_CHECKING:
    from h2.events import Event
    from hyperframe.frame import Frame

#: Largest HTTP/2 frame clients may send. At h2's default (16 KiB) a 160 kB
#: image arrives as ten DATA frames, and each costs a pass through h2 and
#: grpclib in Python; at 1 MiB it is one. Measured: 6% less server CPU per
#: call on a 160 kB JPEG (benchmarks/README.md).
MAX_FRAME_SIZE = 1024 * 1024

# hyperframe shows this many bytes of a frame's body in its repr.
_SHOWN = 10


def short_hex(head: bytes, length: int) -> str:
    """hyperframe's ``_raw_data_repr`` text for a body of ``length`` bytes starting with ``head``.

    hyperframe hex-encodes the whole body and then keeps 20 digits; this
    encodes only the bytes it keeps.
    """
    if not length:
        return "None"
    text = binascii.hexlify(head[:_SHOWN]).decode("ascii")
    return f"<hex:{text}...>" if length > _SHOWN else f"<hex:{text}>"


class QuietDataFrame(DataFrame):
    """A received DATA frame whose repr costs ten bytes of hex instead of the whole body.

    h2 formats every received frame for a trace log, eagerly, even when
    nothing logs (``H2Connection._receive_frame`` calls ``repr(frame)``): a
    DataFrame serializes its body (a copy) and hex-encodes all of it. That was
    4% of the server's CPU on 160 kB images. The text is the same.
    """

    def _body_repr(self) -> str:
        padding = self.serialize_padding_data()
        head = padding + self.data[:_SHOWN] + bytes(min(self.pad_length, _SHOWN))
        return short_hex(head, len(padding) + len(self.data) + self.pad_length)


class BoundedFrameBuffer(FrameBuffer):
    """h2's frame reader, refusing a header block that grows past ``limit`` bytes as it arrives.

    h2 gathers HEADERS and CONTINUATION frames until END_HEADERS, up to 64
    frames; the header-list limit applies only once the block is complete
    and decoded. With 1 MiB frames, one connection could make the server
    hold 64 MiB of a block that never ends. Here the encoded block is
    counted frame by frame: an encoded header block is never larger than
    the list it decodes to (HPACK adds a few bytes per field, the list
    counts 32), so a limit equal to the header-list limit refuses nothing
    that the list limit would let through.
    """

    def __init__(self, *, limit: int) -> None:
        super().__init__(server=True)
        self._limit = limit

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        if isinstance(f, (HeadersFrame, ContinuationFrame, PushPromiseFrame)):
            size = len(f.data) + sum(len(frame.data) for frame in self._headers_buffer)
            if size > self._limit:
                raise Abuse(f"a header block reached {size} bytes; the limit is {self._limit}")
        return super()._update_header_buffer(f)


def _bare(exc: ProtocolError) -> ProtocolError:
    """``exc`` without its traceback and the errors it came from, kept only for its message.

    Its traceback holds the frames it went through, and their locals: the
    connection that keeps it, the data being read (up to 256 KiB) and the
    frame refused (a 1 MiB CONTINUATION, say). That cycle only a full garbage
    collection frees, rare in a worker: each header-block or Rapid Reset
    attack left its connections there (benchmarks/README.md).
    """
    exc.__traceback__ = exc.__cause__ = exc.__context__ = None
    return exc


class H2ServerConnection(H2Connection):
    """h2's connection announcing a larger frame size in its very first SETTINGS.

    Changing it later (update_settings) races: h2 applies the client's ACK
    only after the data it arrived with, and rejects a large frame that
    follows the ACK in the same read.

    Received DATA frames become :class:`QuietDataFrame` before h2 formats
    them. This is per connection, where a replacement of hyperframe's
    ``_raw_data_repr`` would change every h2 user in the process (clients
    included) for the same saving: measured on 160 kB DATA frames, h2's
    receive path took about 1200 µs per frame as is, 300-400 µs with the
    module function replaced, and 230-320 µs with this class (it also skips
    the body copy).

    Answers' headers are coded by :class:`AnswerEncoder`: no Huffman code,
    no table entry for a value of one call.
    """

    def __init__(
        self, config: H2Configuration | None = None, *, limits: ConnectionLimits | None = None
    ) -> None:
        super().__init__(config=config)
        self.encoder = AnswerEncoder()  # nothing encoded yet: the same empty table
        limits = limits or ConnectionLimits()
        self.local_settings[SettingCodes.MAX_FRAME_SIZE] = MAX_FRAME_SIZE
        self.local_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = limits.max_concurrent_streams
        self.local_settings[SettingCodes.MAX_HEADER_LIST_SIZE] = limits.max_header_list_size
        self.local_settings.acknowledge()
        self.max_inbound_frame_size = MAX_FRAME_SIZE
        self.decoder.max_header_list_size = limits.max_header_list_size
        self.incoming_buffer = BoundedFrameBuffer(limit=limits.max_header_list_size)
        #: Whether the client's preface and first SETTINGS have arrived.
        self.handshaken = False
        # h2 dispatches on the exact class of a frame.
        self._frame_dispatch_table[QuietDataFrame] = self._frame_dispatch_table[DataFrame]
        self._resets = PrematureResets(limits.max_premature_resets)
        rate = limits.max_control_rate
        self._pings = Rate("PING", rate, burst=10 * rate)
        self._settings = Rate("SETTINGS", rate, burst=10 * rate)
        #: The protocol error that ended the connection (h2 has queued its GOAWAY), if any.
        self.failure: ProtocolError | None = None
        #: Bytes of answers being sent, not all handed to the transport yet: they
        #: wait for flow-control window (see emotion.transport.messages.send_message).
        self.unsent_answers = 0

    def receive_data(self, data: bytes) -> list[Event]:  # type: ignore[override]
        """h2's, but a protocol error is kept in :attr:`failure` instead of raised.

        h2 has queued a GOAWAY for it; the caller sends it and closes. The
        events of the frames read before the error are dropped, as when it
        raises: the connection is over.
        """
        if self.failure is not None:
            return []
        try:
            return super().receive_data(data)
        except ProtocolError as exc:
            self.failure = _bare(exc)
            return []

    def _receive_frame(self, frame: Frame) -> list[Event]:
        kind = frame.__class__
        if kind is DataFrame:
            frame.__class__ = QuietDataFrame
        elif kind is PingFrame and "ACK" not in frame.flags:
            self._pings.spend()
        elif kind is SettingsFrame and "ACK" not in frame.flags:
            self.handshaken = True  # h2 has read the preface before any frame
            self._settings.spend()
        return super()._receive_frame(frame)

    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Frame], list[Event]]:
        opens = frame.stream_id > self.highest_inbound_stream_id
        full = self.open_inbound_streams >= self.local_settings.max_concurrent_streams
        if opens and full and frame.stream_id % 2 == 1:
            return self._refuse(frame)
        frames, events = super()._receive_headers_frame(frame)
        if opens:
            self._resets.opened(frame.stream_id)
        return frames, events

    def _refuse(self, frame: HeadersFrame) -> tuple[list[Frame], list[Event]]:
        """RST_STREAM(REFUSED_STREAM) for a stream over the limit; the connection goes on.

        h2 would raise TooManyStreamsError, a connection error, ending every
        call on the connection. A refused stream is one the client may retry
        (RFC 9113, 8.7). Its headers are still decoded, to keep HPACK's table
        in step with the client's, and the stream is recorded as reset by us,
        so that h2 answers its late frames as it does for any reset stream
        (giving the connection window back for its DATA).
        """
        events = self.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        _decode_headers(self.decoder, frame.data)
        self.highest_inbound_stream_id = frame.stream_id
        self._closed_streams[frame.stream_id] = StreamClosedBy.SEND_RST_STREAM
        refusal = RstStreamFrame(frame.stream_id)
        refusal.error_code = ErrorCodes.REFUSED_STREAM
        return [refusal], events

    def _receive_rst_stream_frame(self, frame: RstStreamFrame) -> tuple[list[Frame], list[Event]]:
        stream = self.streams.get(frame.stream_id)
        if stream is not None and not stream.closed:
            self._resets.reset(frame.stream_id)
        return super()._receive_rst_stream_frame(frame)
