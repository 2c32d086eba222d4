"""Protobuf messages and the generated dataclasses, both ways, for grpclib and the processes.

``reading``: what arrives is parsed by protobuf's C parser and copied into
the dataclass, strictly (a known field with the wrong wire type is refused
by name). ``writing``: what leaves is copied into protobuf's message and
written by its C encoder, a large image copied once. ProtobufCodec is
grpclib's codec made of the two.
"""

from __future__ import annotations

from typing import Any

import betterproto2
from grpclib.encoding.base import CodecBase

from emotion.codec.reading import InvalidMessage, parse
from emotion.codec.writing import BY_HAND, Encoded, encode, framed

__all__ = ["BY_HAND", "Encoded", "InvalidMessage", "ProtobufCodec", "encode", "framed", "parse"]


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
