"""Messages from the network, read by protobuf's C parser into the generated dataclasses.

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
