"""Messages written by protobuf's C encoder from the generated dataclasses.

A message is copied into protobuf's message and written by its C encoder:
the bytes betterproto2 writes (save the sign of -0.0, which protobuf keeps,
and floats past float32's range), without its per-field bookkeeping in
Python (see :func:`encode`). A large bytes field (an image) is written
around protobuf's message, copied once (see :func:`framed`).
"""

from __future__ import annotations

import functools

import betterproto2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message as ProtobufMessage

from emotion.codec.reading import _field_table, _is_repeated, _reader


def encode(message: betterproto2.Message) -> bytes:
    """``message`` written by protobuf's C encoder, or by betterproto2 if protobuf refuses a value.

    betterproto2's own writer looks up every field's default under
    ``warnings.catch_warnings`` (a change to process-wide state, taken under
    the GIL): about 0.5 ms for a one-face Response on the development
    machine, against tens of microseconds here. protobuf takes only its own
    types, where betterproto2 converts what it can (a 0-d numpy array in a
    float field, a bytearray in a bytes field): those messages, and values
    neither can write, go to betterproto2, which writes them or raises as it
    always did. Float fields differ in one way: a value past float32's range
    is written as infinity, where betterproto2 raises.
    """
    writer = _writer(type(message))
    built = writer.protobuf_class()
    try:
        writer.fill(message, built)
    except (TypeError, ValueError):
        return bytes(message)
    return built.SerializeToString()


#: A bytes field this long or longer is written around protobuf's message (see :func:`framed`).
BY_HAND = 4096


def framed(message: betterproto2.Message) -> bytes:
    """``message`` behind gRPC's 5-byte prefix (uncompressed, length): what :func:`encode` writes.

    A request's image would be copied into protobuf's message, copied out
    by its writer, and copied again behind the prefix: three copies of
    every byte, most of a client's CPU per call for a large image. Here a
    bytes field of :data:`BY_HAND` bytes or more is written as protobuf
    writes it (its key, its length, its bytes), ahead of the fields
    protobuf writes, and the whole is put together once. Fields in another
    order than protobuf's are the same message to any parser; a Request's
    image is its only field, and its bytes are protobuf's.
    """
    writer = _writer(type(message))
    parts: list[bytes] = []
    skip = []
    for name, key in writer.bytes_fields:
        value = getattr(message, name)
        if type(value) is bytes and len(value) >= BY_HAND:
            parts += (key, _varint(len(value)), value)
            skip.append(name)
    if skip:
        built = writer.protobuf_class()
        try:
            writer.fill(message, built, tuple(skip))
        except (TypeError, ValueError):
            parts = [bytes(message)]  # betterproto2 writes it, or raises, as encode() does
        else:
            parts.append(built.SerializeToString())
    else:
        parts.append(encode(message))
    length = sum(map(len, parts))
    return b"".join([b"\0", length.to_bytes(4, "big"), *parts])


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class Encoded:
    """A message already written, sent as its bytes by :class:`ProtobufCodec`.

    Writing a message is Python work that holds the GIL; done in the thread
    that made the message, it leaves the event loop free for the network.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class _Writer:
    """Copies one generated dataclass into protobuf's message of the same type."""

    def __init__(self, message_type: type[betterproto2.Message]) -> None:
        reader = _reader(message_type)  # it refuses the field kinds neither supports
        self.protobuf_class = reader.protobuf_class
        descriptor: Descriptor = getattr(message_type, "DESCRIPTOR")  # noqa: B009 - a static property
        table = _field_table(message_type)
        #: (dataclass attribute, protobuf field, repeated, nested message type or None)
        self._fields: list[tuple[str, str, bool, type[betterproto2.Message] | None]] = []
        #: (dataclass attribute, its key on the wire) of each singular bytes field, by number
        self.bytes_fields: list[tuple[str, bytes]] = []
        for field in descriptor.fields:
            name, _, inner = table[field.number]
            nested = inner if field.type == FieldDescriptor.TYPE_MESSAGE else None
            self._fields.append((name, field.name, _is_repeated(field), nested))
        for field in sorted(descriptor.fields, key=lambda field: field.number):
            if field.type == FieldDescriptor.TYPE_BYTES and not _is_repeated(field):
                key = _varint(field.number << 3 | 2)  # length-delimited
                self.bytes_fields.append((table[field.number].name, key))

    def fill(
        self, message: betterproto2.Message, target: ProtobufMessage, skip: tuple[str, ...] = ()
    ) -> None:
        for name, field, repeated, nested in self._fields:
            value = getattr(message, name)
            if value is None or name in skip:
                continue
            if nested is None:
                if repeated:
                    getattr(target, field).extend(value)
                else:
                    setattr(target, field, value)
                continue
            writer = _writer(nested)
            if repeated:
                items = getattr(target, field)
                for item in value:
                    writer.fill(item, items.add())
            else:
                inner = getattr(target, field)
                inner.SetInParent()  # present even when every field inside is a default
                writer.fill(value, inner)


@functools.cache
def _writer(message_type: type[betterproto2.Message]) -> _Writer:
    return _Writer(message_type)
