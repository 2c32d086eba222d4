"""HPACK as our connections use it: header blocks that repeat are not encoded again.

A gRPC connection sends nearly the same headers on every call. Once HPACK's
table holds them, their block is a few one-byte indexes, the same bytes
each time, and an indexed field changes no table (RFC 7541, 6.1): what
encoded such a block once can give it again while the table stays as it was.
"""

from __future__ import annotations

from typing import Any, cast

from hpack import Encoder

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
