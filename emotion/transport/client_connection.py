"""h2's connection as the client uses it: messages sent without copies, frames read unformatted.

A request's message went through h2 as four copies of itself: the DATA
frame's body, the body behind its header, h2's outgoing buffer, and the
bytes taken out of it. Here a DATA frame goes out as its 9-byte header and
the message itself, and the transport joins them once with whatever else
that loop pass wrote.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from h2.config import DummyLogger, H2Configuration
from h2.connection import H2Connection
from h2.frame_buffer import FrameBuffer
from hyperframe.flags import Flags
from hyperframe.frame import DataFrame, Frame, HeadersFrame, WindowUpdateFrame

from emotion.transport.header_blocks import RepeatingDecoder, RepeatingEncoder

if TYPE_CHECKING:
    from h2.events import Event

# An HTTP/2 frame header (RFC 9113, 4.1): 24-bit length, type, flags, stream id.
_HEADER = struct.Struct(">HBBBL")
_DATA, _HEADERS = 0x0, 0x1
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x4, 0x8, 0x20


def frame_header(frame: DataFrame | HeadersFrame) -> bytes:
    """The 9 bytes before ``frame``'s body, for a frame with neither padding nor priority."""
    flags = _END_STREAM if "END_STREAM" in frame.flags else 0
    if "END_HEADERS" in frame.flags:
        flags |= _END_HEADERS
    length = len(frame.data)
    return _HEADER.pack(length >> 8, length & 0xFF, frame.type, flags, frame.stream_id)


def _unformatted_repr(frame: Frame) -> str:
    return f"{type(frame).__bases__[0].__name__}(stream_id={frame.stream_id})"


#: The frames a client receives with every call, each given a repr that
#: formats nothing: h2 formats every received frame for its trace log,
#: eagerly, and grpclib's channel gives h2 no logger to show it.
_UNFORMATTED: dict[type[Frame], type[Frame]] = {
    kind: type(f"Unformatted{kind.__name__}", (kind,), {"__repr__": _unformatted_repr})
    for kind in (DataFrame, HeadersFrame, WindowUpdateFrame)
}


class AnswerFrameBuffer(FrameBuffer):
    """h2's frame buffer, building the frames of an answer without hyperframe's parse.

    hyperframe builds a received frame through three constructors, then
    reads its flags and its body in two more passes: about 4 µs a frame,
    and an answer is three frames. An unpadded DATA frame, and a HEADERS
    frame that is its whole header block with neither padding nor
    priority, are built here with what those passes would have set (a test
    compares every attribute). Every other frame, and any frame while a
    header block is open, is read by an h2 FrameBuffer of its own, given
    that frame's bytes alone: h2's buffer keeps its bytes in an attribute
    whose name and type changed between versions, and this never reads it.
    """

    def __init__(self) -> None:
        super().__init__(server=False)
        self._received = bytearray()
        self._h2 = FrameBuffer(server=False)

    def add_data(self, data: Any) -> None:  # h2 types it as a buffer, in newer versions only
        self._received += data

    def __next__(self) -> Frame:
        data = self._received
        while len(data) >= 9:
            high, low, kind, flags, stream_id = _HEADER.unpack_from(data)
            length, stream_id = (high << 8) | low, stream_id & 0x7FFFFFFF
            if len(data) < 9 + length:
                break
            frame: DataFrame | HeadersFrame | None
            if self._h2._headers_buffer:  # a header block is open: h2 reads what follows
                frame = None
            elif kind == _DATA and stream_id and not flags & _PADDED:
                frame = DataFrame.__new__(DataFrame)
            elif (
                kind == _HEADERS
                and stream_id
                and flags & (_END_HEADERS | _PADDED | _PRIORITY) == _END_HEADERS
            ):
                frame = HeadersFrame.__new__(HeadersFrame)
                frame.depends_on, frame.stream_weight, frame.exclusive = 0, 0, False
            else:
                frame = None
            if frame is None:
                self._h2.max_frame_size = self.max_frame_size
                self._h2.add_data(bytes(data[: 9 + length]))
                del data[: 9 + length]
                try:
                    return next(self._h2)
                except StopIteration:  # a frame of an unfinished header block
                    continue
            self._validate_frame_length(length)
            frame.stream_id, frame.body_len, frame.pad_length = stream_id, length, 0
            frame.flags = Flags(frame.defined_flags)
            if flags & _END_STREAM:
                frame.flags.add("END_STREAM")
            if kind == _HEADERS:
                frame.flags.add("END_HEADERS")
            frame.data = bytes(data[9 : 9 + length])
            del data[: 9 + length]
            return frame
        raise StopIteration


class H2ClientConnection(H2Connection):
    """h2's connection, sending DATA frames' bodies as they are.

    h2 keeps what it has to send in one buffer, and each DATA frame is
    serialized (a copy of its body twice) into it, then copied out of it.
    Here each unpadded DATA frame is kept as its header and its body, in
    order with the other frames, until :meth:`chunks_to_send` hands them
    over; :meth:`data_to_send` still gives everything as one bytes, for
    grpclib's own writes. A HEADERS frame with neither padding nor priority
    (every call's) is written as its header and its block.

    An answer's frames are read by :class:`AnswerFrameBuffer`. When h2 has
    no logger (grpclib's channel gives it none), received frames are not
    formatted for the log that nothing keeps; and headers already in HPACK's
    tables are not coded again (:class:`RepeatingEncoder`,
    :class:`RepeatingDecoder`).
    """

    def __init__(self, config: H2Configuration | None = None) -> None:
        super().__init__(config=config)
        # Nothing coded yet: the same empty tables, h2's limit on a header list.
        self.encoder = RepeatingEncoder()
        self.decoder = RepeatingDecoder(self.decoder.max_header_list_size)
        self.incoming_buffer = AnswerFrameBuffer()  # nothing received yet
        #: Frames to send, before those in h2's own buffer.
        self._chunks: list[bytes] = []
        self._quiet = type(self.config.logger) is DummyLogger
        for kind, unformatted in _UNFORMATTED.items():
            self._frame_dispatch_table[unformatted] = self._frame_dispatch_table[kind]

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        for frame in frames:
            if type(frame) is HeadersFrame and not (
                "PADDED" in frame.flags or "PRIORITY" in frame.flags
            ):
                # A call's headers, without hyperframe's general serializer.
                self._data_to_send += frame_header(frame) + frame.data
            elif type(frame) is not DataFrame or "PADDED" in frame.flags:
                super()._prepare_for_sending([frame])
            else:
                if self._data_to_send:  # frames before this one
                    self._chunks.append(bytes(self._data_to_send))
                    self._data_to_send = bytearray()
                self._chunks.append(frame_header(frame))
                if frame.data:
                    self._chunks.append(frame.data)

    def chunks_to_send(self) -> list[bytes]:
        """What there is to send, in order, as pieces that were never copied together."""
        chunks, self._chunks = self._chunks, []
        if self._data_to_send:
            chunks.append(bytes(self._data_to_send))
            self._data_to_send = bytearray()
        return chunks

    def data_to_send(self, amount: int | None = None) -> bytes:
        if not self._chunks:
            return super().data_to_send(amount)
        data = b"".join(self.chunks_to_send())
        if amount is not None and amount < len(data):
            self._data_to_send = bytearray(data[amount:])
            return data[:amount]
        return data

    def clear_outbound_data_buffer(self) -> None:
        self._chunks = []
        super().clear_outbound_data_buffer()

    def _receive_frame(self, frame: Frame) -> list[Event]:
        if self._quiet:
            frame.__class__ = _UNFORMATTED.get(frame.__class__, frame.__class__)
        return super()._receive_frame(frame)
