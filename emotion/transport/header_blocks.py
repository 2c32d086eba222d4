"""HPACK as our connections use it: header blocks that repeat are not encoded again.

A gRPC connection sends nearly the same headers on every call. Once HPACK's
table holds them, their block is a few one-byte indexes, the same bytes
each time, and an indexed field changes no table (RFC 7541, 6.1): what
encoded or decoded such a block once can give the result again while the
table stays as it was.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple, OversizedHeaderListError

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


class RepeatingDecoder(Decoder):
    """HPACK's decoder, giving the same headers again for indexes it decoded before.

    A server's answers begin with the same indexed fields on every call
    (``:status``, ``content-type``; ``grpc-status``), and usually little
    else: a request id never indexed. The leading one-byte indexes of a
    block are looked up as one key. What follows them is read here when it
    is literals kept out of the table, written raw (as AnswerEncoder writes
    them), and decoded by hpack otherwise. Kept results are dropped when a
    block changes the table (it adds to it, or resizes it), so an index
    always means what it meant when decoded.
    """

    #: Prefixes kept: an answer's headers and its trailers, per status.
    KEPT = 16

    def __init__(self, max_header_list_size: int = 2**16) -> None:
        super().__init__(max_header_list_size)
        self._blocks: dict[tuple[bytes, bool], tuple[list[HeaderTuple], int]] = {}

    def decode(self, data: bytes, raw: bool = False) -> Iterable[HeaderTuple]:
        indexes = _leading_indexes(data)
        rest = len(data) - indexes
        # A table size update must come first: with fields before it, hpack raises.
        if not indexes or (rest and data[indexes] & 0xE0 == 0x20):
            return self._decoded(data, raw)
        prefix = data[:indexes] if rest else data
        kept = self._blocks.get((prefix, raw))
        if kept is None:
            headers = list(super().decode(prefix, raw))
            kept = headers, _size(headers)
            if len(self._blocks) < self.KEPT:
                self._blocks[(prefix, raw)] = kept
        else:
            self._assert_valid_table_size()  # as hpack checks after every block
        headers, size = kept
        if not rest:
            return list(headers)
        more = _raw_literals(data, indexes) if raw else None
        if more is None:
            more = list(self._decoded(data[indexes:], raw))
        if size + _size(more) > self.max_header_list_size:
            raise OversizedHeaderListError(
                f"A header list larger than {self.max_header_list_size} has been received"
            )
        return headers + more

    def _decoded(self, data: bytes, raw: bool) -> Iterable[HeaderTuple]:
        headers = super().decode(data, raw)
        if not _changes_no_table(data):
            self._blocks.clear()
        return headers


def _leading_indexes(block: bytes) -> int:
    """How many bytes at the start of ``block`` are one-byte indexed fields (indexes 1 to 126)."""
    count = 0
    for byte in block:
        if not byte & 0x80 or byte == 0xFF:  # 0xFF starts an index of two bytes or more
            break
        count += 1
    return count


def _raw_literals(block: bytes, at: int) -> list[HeaderTuple] | None:
    """The fields from ``at`` on, if each is a literal hpack would read alike from a few slices.

    That is: not indexed or never indexed (RFC 7541, 6.2.2-3), so no table
    changes; a name of its own, not an index; name and value raw (not
    Huffman-coded) and shorter than 127 bytes, so each length is one byte.
    None for anything else, which hpack reads (and refuses) itself.
    """
    fields: list[HeaderTuple] = []
    end = len(block)
    while at < end:
        kind = block[at]
        if kind not in (0x00, 0x10) or at + 2 > end:
            return None
        name_length = block[at + 1]
        name_end = at + 2 + name_length
        if name_length >= 0x7F or name_end >= end:  # Huffman-coded (0x80 set), long, or cut
            return None
        value_length = block[name_end]
        value_end = name_end + 1 + value_length
        if value_length >= 0x7F or value_end > end:
            return None
        name, value = block[at + 2 : name_end], block[name_end + 1 : value_end]
        fields.append(NeverIndexedHeaderTuple(name, value) if kind else HeaderTuple(name, value))
        at = value_end
    return fields


def _size(headers: list[HeaderTuple]) -> int:
    """The header list's size as HTTP/2 counts it (RFC 9113, 6.5.2)."""
    return sum(32 + len(name) + len(value) for name, value in headers)


class AnswerEncoder(Encoder):
    """HPACK's encoder for answers: literals not Huffman-coded, values of one call not indexed.

    hpack codes every literal with Huffman's code, a Python loop per byte on
    both sides, to save a few bytes; and adds every literal to the table.
    An answer's only literals after the first call are values that change
    on every call (its request id, an error's message, a retry pushback):
    indexed, each would push out a field that repeats, and the client would
    decode a changed table on every call. They go out never indexed, as
    they are.
    """

    #: Fields whose value changes from call to call, never worth a table entry.
    PER_CALL = frozenset(
        {b"x-request-id", b"grpc-message", b"grpc-retry-pushback-ms"}
        | {"x-request-id", "grpc-message", "grpc-retry-pushback-ms"}
    )

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        if type(headers) is list:
            per_call = self.PER_CALL
            headers = [
                (header[0], header[1], True) if header[0] in per_call else header
                for header in headers
            ]
        return super().encode(headers, huffman=False)
