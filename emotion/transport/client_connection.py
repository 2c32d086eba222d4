"""h2's connection as the client uses it: messages sent without copies, frames read unformatted.

A request's message went through h2 as four copies of itself: the DATA
frame's body, the body behind its header, h2's outgoing buffer, and the
bytes taken out of it. Here a DATA frame goes out as its 9-byte header and
the message itself, and the transport joins them once with whatever else
that loop pass wrote.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, cast

from h2.config import DummyLogger, H2Configuration
from h2.connection import H2Connection
from hpack import Encoder
from hyperframe.frame import DataFrame, Frame, HeadersFrame, WindowUpdateFrame

if TYPE_CHECKING:
    from h2.events import Event

# An HTTP/2 frame header (RFC 9113, 4.1): 24-bit length, type, flags, stream id.
_HEADER = struct.Struct(">HBBBL")
_DATA, _END_STREAM = 0x0, 0x1


def data_frame_header(length: int, stream_id: int, *, end_stream: bool) -> bytes:
    """The 9 bytes before an unpadded DATA frame's body of ``length`` bytes."""
    flags = _END_STREAM if end_stream else 0
    return _HEADER.pack(length >> 8, length & 0xFF, _DATA, flags, stream_id)


def _unformatted_repr(frame: Frame) -> str:
    return f"{type(frame).__bases__[0].__name__}(stream_id={frame.stream_id})"


#: The frames a client receives with every call, each given a repr that
#: formats nothing: h2 formats every received frame for its trace log,
#: eagerly, and grpclib's channel gives h2 no logger to show it.
_UNFORMATTED: dict[type[Frame], type[Frame]] = {
    kind: type(f"Unformatted{kind.__name__}", (kind,), {"__repr__": _unformatted_repr})
    for kind in (DataFrame, HeadersFrame, WindowUpdateFrame)
}


_TABLE_SIZE = cast(property, vars(Encoder)["header_table_size"])


class RepeatingEncoder(Encoder):
    """HPACK's encoder, giving the same bytes again for headers it encoded as indexes alone.

    A client sends the same request headers on every call, and once HPACK's
    table holds them their block is a few indexes, the same bytes each
    time: an indexed field changes no table (RFC 7541, 6.1). The block of a
    call's leading plain headers is kept when it is indexes alone; what
    follows them (a ``grpc-timeout`` never indexed, metadata) is encoded as
    always. Kept blocks are dropped when a block may have changed the
    table (it adds to it, or resizes it) and when the table's size changes.
    """

    #: Blocks kept: a client's calls have a few sets of headers, one per method.
    KEPT = 16

    def __init__(self) -> None:
        super().__init__()
        self._blocks: dict[tuple[tuple[bytes, bytes], ...], bytes] = {}

    @property
    def header_table_size(self) -> int:
        return cast(int, _TABLE_SIZE.__get__(self))

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        _TABLE_SIZE.__set__(self, value)  # h2 sets it from the server's SETTINGS
        self._blocks.clear()

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        if not huffman or type(headers) is not list:
            return self._encoded(headers, huffman)
        # Plain tuples only: a NeverIndexedHeaderTuple equals its plain twin.
        plain = 0
        for header in headers:
            if type(header) is not tuple:
                break
            plain += 1
        key = tuple(headers[:plain])
        block = self._blocks.get(key)
        if block is None:
            block = super().encode(list(key), huffman)
            if not _indexes_alone(block, plain):
                self._blocks.clear()
            elif len(self._blocks) < self.KEPT:
                self._blocks[key] = block
        if plain == len(headers):
            return block
        return block + self._encoded(headers[plain:], huffman)

    def _encoded(self, headers: Any, huffman: bool) -> bytes:
        block = super().encode(headers, huffman)
        if not _changes_no_table(block):
            self._blocks.clear()
        return block


def _indexes_alone(block: bytes, fields: int) -> bool:
    """Whether ``block`` is ``fields`` indexed fields of one byte each (indexes 1 to 127)."""
    return len(block) == fields and all(byte & 0x80 for byte in block)


def _changes_no_table(block: bytes) -> bool:
    """Whether ``block`` is indexed fields and literals not indexed (RFC 7541, 6.1 and 6.2.2-3)."""
    at = 0
    while at < len(block):
        first = block[at]
        if first & 0x80:  # an indexed field
            _, at = _integer(block, at, 7)
        elif first & 0xE0 == 0:  # a literal without indexing (0000) or never indexed (0001)
            name, at = _integer(block, at, 4)
            if not name:  # the name is a string too
                at = _after_string(block, at)
            at = _after_string(block, at)
        else:  # a literal added to the table (01), or a table size update (001)
            return False
    return True


def _integer(block: bytes, at: int, prefix: int) -> tuple[int, int]:
    """The HPACK integer at ``at``, its first byte ``prefix`` bits (RFC 7541, 5.1); and its end."""
    mask = (1 << prefix) - 1
    value = block[at] & mask
    at += 1
    if value < mask:
        return value, at
    shift = 0
    while True:
        byte = block[at]
        at += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _after_string(block: bytes, at: int) -> int:
    """Where the HPACK string at ``at`` ends (RFC 7541, 5.2)."""
    length, at = _integer(block, at, 7)
    return at + length


class H2ClientConnection(H2Connection):
    """h2's connection, sending DATA frames' bodies as they are.

    h2 keeps what it has to send in one buffer, and each DATA frame is
    serialized (a copy of its body twice) into it, then copied out of it.
    Here each unpadded DATA frame is kept as its header and its body, in
    order with the other frames, until :meth:`chunks_to_send` hands them
    over; :meth:`data_to_send` still gives everything as one bytes, for
    grpclib's own writes.

    When h2 has no logger (grpclib's channel gives it none), received
    frames are not formatted for the log that nothing keeps; and request
    headers already in HPACK's tables are not encoded again
    (:class:`RepeatingEncoder`).
    """

    def __init__(self, config: H2Configuration | None = None) -> None:
        super().__init__(config=config)
        self.encoder = RepeatingEncoder()  # nothing encoded yet: the same empty table
        #: Frames to send, before those in h2's own buffer.
        self._chunks: list[bytes] = []
        self._quiet = type(self.config.logger) is DummyLogger
        for kind, unformatted in _UNFORMATTED.items():
            self._frame_dispatch_table[unformatted] = self._frame_dispatch_table[kind]

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        for frame in frames:
            if frame.__class__ is not DataFrame or "PADDED" in frame.flags:
                super()._prepare_for_sending([frame])
                continue
            if self._data_to_send:  # frames before this one
                self._chunks.append(bytes(self._data_to_send))
                self._data_to_send = bytearray()
            end_stream = "END_STREAM" in frame.flags
            self._chunks.append(
                data_frame_header(len(frame.data), frame.stream_id, end_stream=end_stream)
            )
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
