"""Protobuf messages read by protobuf's own parser into the generated dataclasses.

betterproto2 reads leniently: a field that runs past the end of its message is
cut short, and a field sent with another wire type than its own is kept as
whatever arrived (an int where bytes belong, bytes where a float belongs), so
the server's code or a client's caller would get values of the wrong type.
Messages from the network are therefore parsed once, by protobuf's C parser,
which checks the encoding, and copied field by field into the dataclass.

One rule differs from protobuf's: a known field that arrives with the wrong
wire type is refused by name. protobuf would keep it as an unknown field and
read the field as unset, which hides a peer built from another schema behind
an empty value. Unknown field numbers are ignored, as protobuf ignores them,
so that peers can add fields.

Messages are written the same way round: copied into protobuf's message and
written by its C encoder: the bytes betterproto2 writes (save the sign of
-0.0, which protobuf keeps, and floats past float32's range), without its
per-field bookkeeping in Python (see :func:`encode`).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar, cast

import betterproto2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtobufMessage
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.unknown_fields import UnknownFieldSet
from grpclib.encoding.base import CodecBase

M = TypeVar("M", bound=betterproto2.Message)

_WIRE_TYPES = {
    0: "varint",
    1: "64-bit",
    2: "length-delimited",
    3: "start-group",
    4: "end-group",
    5: "32-bit",
}
_VARINT = "varint"
_FIXED64 = "64-bit"
_FIXED32 = "32-bit"
_LENGTH = "length-delimited"
_WIRE_TYPE_OF = {
    FieldDescriptor.TYPE_INT32: _VARINT,
    FieldDescriptor.TYPE_INT64: _VARINT,
    FieldDescriptor.TYPE_UINT32: _VARINT,
    FieldDescriptor.TYPE_UINT64: _VARINT,
    FieldDescriptor.TYPE_SINT32: _VARINT,
    FieldDescriptor.TYPE_SINT64: _VARINT,
    FieldDescriptor.TYPE_BOOL: _VARINT,
    FieldDescriptor.TYPE_ENUM: _VARINT,
    FieldDescriptor.TYPE_FIXED64: _FIXED64,
    FieldDescriptor.TYPE_SFIXED64: _FIXED64,
    FieldDescriptor.TYPE_DOUBLE: _FIXED64,
    FieldDescriptor.TYPE_FIXED32: _FIXED32,
    FieldDescriptor.TYPE_SFIXED32: _FIXED32,
    FieldDescriptor.TYPE_FLOAT: _FIXED32,
    FieldDescriptor.TYPE_STRING: _LENGTH,
    FieldDescriptor.TYPE_BYTES: _LENGTH,
    FieldDescriptor.TYPE_MESSAGE: _LENGTH,
}
_TYPE_NAMES = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in vars(FieldDescriptor).items()
    if name.startswith("TYPE_") and isinstance(value, int)
}


class InvalidMessage(Exception):
    """Bytes that are not a valid message of the expected type; the text says why.

    The text names the message type and, where one is at fault, the field, so
    that whoever sent it can act on it.
    """

    def __init__(self, type_name: str, reason: str) -> None:
        super().__init__(f"not a valid {type_name}: {reason}")
        self.type_name = type_name
        self.reason = reason


def parse(message_type: type[M], data: bytes) -> M:
    """``data`` as a ``message_type``, or InvalidMessage saying what is wrong with it."""
    reader = _reader(message_type)
    try:
        parsed = reader.protobuf_class.FromString(data)
    except DecodeError:
        raise InvalidMessage(
            reader.type_name,
            "the protobuf encoding is broken "
            "(a field runs past the end of the message, or a tag or length is malformed)",
        ) from None
    try:
        return cast(M, reader.read(parsed))
    except _FieldError as exc:
        raise InvalidMessage(reader.type_name, exc.text()) from None


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


class ProtobufCodec(CodecBase):
    """grpclib's codec for generated messages: written by :func:`encode`, read by :func:`parse`.

    Messages of protobuf's own classes (grpclib's health and reflection
    services) are written and read by protobuf, as grpclib's ProtoCodec does;
    an :class:`Encoded` one is sent as it is.
    """

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, Encoded):
            return message.data
        if not isinstance(message, message_type):
            raise TypeError(f"message must be of type {message_type!r}, not {type(message)!r}")
        if isinstance(message, betterproto2.Message):
            return encode(message)
        return message.SerializeToString()  # type: ignore[no-any-return]

    def framed(self, message: Any, message_type: Any) -> bytes:
        """What :meth:`encode` writes, behind gRPC's 5-byte prefix (see :func:`framed`)."""
        if isinstance(message, betterproto2.Message) and isinstance(message, message_type):
            return framed(message)
        data = self.encode(message, message_type)
        return b"\0" + len(data).to_bytes(4, "big") + data

    def decode(self, data: bytes, message_type: Any) -> Any:
        if issubclass(message_type, betterproto2.Message):
            return parse(message_type, data)
        return message_type.FromString(data)


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


class _FieldError(Exception):
    """A field of a nested message is wrong; parse() names the outermost message.

    The field's path (``response[1].bbox.x1``) is put together as the error
    passes out through the messages that hold it, so that reading a valid
    message builds no path at all.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.path = [field]  # innermost first
        self.reason = reason

    def within(self, part: str) -> _FieldError:
        self.path.append(part)
        return self

    def text(self) -> str:
        path = ""
        for part in reversed(self.path):
            path += part if not path or part.startswith("[") else f".{part}"
        return f"{path} {self.reason}"


#: Reads one value of a field from protobuf's message; None: the value as it is.
_ValueReader = Callable[[Any], Any] | None


class _Reader:
    """Copies one parsed protobuf message into its generated dataclass."""

    def __init__(self, message_type: type[betterproto2.Message]) -> None:
        descriptor: Descriptor = getattr(message_type, "DESCRIPTOR")  # noqa: B009 - a static property
        self.message_type = message_type
        self.type_name = descriptor.full_name
        self.protobuf_class: type[ProtobufMessage] = GetMessageClass(descriptor)
        table = _field_table(message_type)
        self._fields: dict[int, tuple[str, str, _ValueReader]] = {}
        for field in descriptor.fields:
            name, meta, inner = table[field.number]
            if meta.map_meta is not None or meta.unwrap is not None:
                raise TypeError(
                    f"{self.type_name}.{field.name}: map and well-known wrapper fields "
                    "are not supported by emotion.codec"
                )
            read_one = _value_reader(field, inner)
            if _is_repeated(field):
                read_one = list if read_one is None else _each(read_one)
            self._fields[field.number] = (name, _expected_wire_type(field), read_one)

    def read(self, parsed: ProtobufMessage) -> betterproto2.Message:
        """The dataclass for ``parsed``, or _FieldError naming the field at fault."""
        unknown = UnknownFieldSet(parsed)
        for index in range(len(unknown)):
            item = unknown[index]
            known = self._fields.get(item.field_number)
            if known is not None:
                name, expected, _ = known
                raise _FieldError(
                    name,
                    f"(field {item.field_number}) has wire type "
                    f"{_WIRE_TYPES.get(item.wire_type, item.wire_type)}, but it is a "
                    f"{expected} field; was the sender built from another .proto?",
                )
        values = {}
        for field, value in parsed.ListFields():
            name, _, read_value = self._fields[field.number]
            if read_value is None:
                values[name] = value
                continue
            try:
                values[name] = read_value(value)
            except _FieldError as exc:
                raise exc.within(name) from None
        return self.message_type(**values)


class _DataclassField(NamedTuple):
    name: str
    meta: betterproto2.FieldMetadata
    #: the class a value (or each item) has: a nested message or enum, or a builtin
    inner: Any


@functools.cache
def _field_table(message_type: type[betterproto2.Message]) -> dict[int, _DataclassField]:
    """A generated dataclass's fields by protobuf field number.

    Read from public APIs only (dataclass fields, betterproto2's per-field
    metadata, the generated annotations), not betterproto2's private table.
    """
    if not dataclasses.is_dataclass(message_type):
        raise TypeError(f"{message_type!r} is not a generated message dataclass")
    hints = typing.get_type_hints(message_type)
    table = {}
    for field in dataclasses.fields(message_type):
        meta = betterproto2.FieldMetadata.get(field)
        table[meta.number] = _DataclassField(field.name, meta, _inner_type(hints[field.name]))
    return table


def _inner_type(hint: Any) -> Any:
    """``X`` from the annotation ``X``, ``X | None`` or ``list[X]``."""
    origin = typing.get_origin(hint)
    if origin is list:
        return _inner_type(typing.get_args(hint)[0])
    if origin in (typing.Union, types.UnionType):
        others = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(others) == 1:
            return _inner_type(others[0])
    return hint


def _value_reader(field: FieldDescriptor, inner: Any) -> _ValueReader:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return lambda value: _reader(inner).read(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return cast(Callable[[Any], Any], inner)
    return None


@functools.cache
def _reader(message_type: type[betterproto2.Message]) -> _Reader:
    return _Reader(message_type)


@functools.cache
def _writer(message_type: type[betterproto2.Message]) -> _Writer:
    return _Writer(message_type)


def _each(read_one: Callable[[Any], Any]) -> Callable[[Any], list[Any]]:
    def read_all(values: Any) -> list[Any]:
        items = []
        for value in values:
            try:
                items.append(read_one(value))
            except _FieldError as exc:
                raise exc.within(f"[{len(items)}]") from None
        return items

    return read_all


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _expected_wire_type(field: FieldDescriptor) -> str:
    wire_type = _WIRE_TYPE_OF[field.type]
    type_name = _TYPE_NAMES[field.type]
    if _is_repeated(field) and wire_type != _LENGTH:
        return f"repeated {type_name} ({wire_type} or packed, length-delimited)"
    return f"{type_name} ({wire_type})"
