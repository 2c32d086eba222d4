"""HPACK as our connections use it: the same blocks and headers hpack gives, less often coded.

Each coder is run against hpack's own on long random sequences of header
lists (calls, answers, errors, table resizes), and must give exactly what
hpack gives, errors included.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from conftest import StartServer
from hpack import (
    Decoder,
    Encoder,
    HeaderTuple,
    HPACKDecodingError,
    InvalidTableIndex,
    NeverIndexedHeaderTuple,
    OversizedHeaderListError,
)
from support.h2client import REQUEST_HEADERS

from emotion import Request, Response
from emotion.contract import RUN_PIPELINE_PATH
from emotion.transport.client import ClientChannel, UnaryCall
from emotion.transport.header_blocks import AnswerEncoder, RepeatingDecoder, RepeatingEncoder


def fields(decoder: Decoder, block: bytes, *, raw: bool = False) -> list[Any]:
    """The header fields hpack's API gives (an iterable), as a list."""
    return list(decoder.decode(block, raw=raw))


def block_sequence(seed: int) -> list[tuple[list[Any], int | None]]:
    """Header lists as a client sends them, with deadlines, metadata, and table resizes."""
    rnd = random.Random(seed)
    blocks: list[tuple[list[Any], int | None]] = []
    for n in range(2000):
        headers: list[Any] = list(REQUEST_HEADERS)
        if rnd.random() < 0.5:
            timeout = f"{rnd.randint(1, 99_999)}m".encode()
            headers.append(NeverIndexedHeaderTuple(b"grpc-timeout", timeout))
        if rnd.random() < 0.05:
            headers.append((b"traceparent", f"00-{rnd.getrandbits(128):032x}-01".encode()))
        if rnd.random() < 0.01:
            headers.insert(3, (b"x-other", str(n).encode()))
        resize = rnd.choice([0, 256, 4096, 65536]) if rnd.random() < 0.01 else None
        blocks.append((headers, resize))
    return blocks


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_repeating_encoder_writes_what_hpack_writes(seed: int) -> None:
    ours, theirs, decoder = RepeatingEncoder(), Encoder(), Decoder()
    decoder.max_allowed_table_size = 65536
    repeated = 0

    for headers, resize in block_sequence(seed):
        if resize is not None:
            ours.header_table_size = theirs.header_table_size = resize
        plain = tuple(itertools.takewhile(lambda header: type(header) is tuple, headers))
        repeated += plain in ours._blocks
        block = ours.encode(list(headers))

        assert block == theirs.encode(list(headers))
        assert decoder.decode(block, raw=True) == [tuple(h) for h in headers]

    assert repeated > 500  # blocks began with one kept (none while the table is too small)


def answer_sequence(seed: int) -> list[tuple[list[Any], int | None, bool]]:
    """Answers' header lists as servers send them, with table resizes, Huffman-coded or not.

    Headers and trailers, errors with their messages, a request id indexed
    or not (as other servers send it), long values and custom metadata of
    every length near where an HPACK length takes a second byte.
    """
    rnd = random.Random(seed)
    answers: list[tuple[list[Any], int | None, bool]] = []
    for n in range(3000):
        request_id = f"{rnd.getrandbits(64):016x}".encode()
        if rnd.random() < 0.5:
            headers: list[Any] = [(b":status", b"200"), (b"content-type", b"application/grpc")]
        else:
            status = b"0" if rnd.random() < 0.8 else str(rnd.randint(1, 16)).encode()
            headers = [(b"grpc-status", status)]
            if status != b"0":
                headers.append((b"grpc-message", f"failed {n}".encode()))
            roll = rnd.random()
            if roll < 0.6:
                headers.append(NeverIndexedHeaderTuple(b"x-request-id", request_id))
            elif roll < 0.7:
                headers.append((b"x-request-id", request_id))  # indexed, changing the table
            elif roll < 0.75:
                headers.append(NeverIndexedHeaderTuple(b"x-long", b"v" * rnd.randint(120, 300)))
        if rnd.random() < 0.02:
            headers.append((b"x-meta", rnd.choice([b"a", b"b", b"\xc3\xa9"])))
        if rnd.random() < 0.2:  # any lengths around one byte's reach, as text
            name = bytes(rnd.choices(b"abcxyz-", k=rnd.choice([0, 1, 5, 125, 126, 127, 140])))
            value = bytes(rnd.choices(b"0123456789 ~", k=rnd.randint(0, 300)))
            headers.append(NeverIndexedHeaderTuple(b"x-" + name, value))
        resize = rnd.choice([0, 256, 4096]) if rnd.random() < 0.01 else None
        answers.append((headers, resize, rnd.random() < 0.7))
    return answers


@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_repeating_decoder_reads_what_hpack_reads(seed: int, raw: bool) -> None:
    encoder, ours, theirs = Encoder(), RepeatingDecoder(), Decoder()
    repeated = 0

    for headers, resize, huffman in answer_sequence(seed):
        if resize is not None:
            encoder.header_table_size = resize
        block = encoder.encode(headers, huffman=huffman)
        repeated += any(key[0] == block[: len(key[0])] for key in ours._blocks)
        decoded, expected = list(ours.decode(block, raw=raw)), list(theirs.decode(block, raw=raw))

        assert decoded == expected
        assert [type(h) for h in decoded] == [type(h) for h in expected]

    assert repeated > 800


def test_the_repeating_decoder_reads_the_answer_encoders_blocks_from_its_kept_prefixes() -> None:
    encoder, ours, theirs = AnswerEncoder(), RepeatingDecoder(), Decoder()
    for n in range(200):
        trailers = [("grpc-status", "0"), ("x-request-id", f"{n:016x}")]
        block = encoder.encode([(":status", "200"), ("content-type", "application/grpc")])
        assert ours.decode(block, raw=True) == theirs.decode(block, raw=True)
        block = encoder.encode(trailers)
        assert ours.decode(block, raw=True) == theirs.decode(block, raw=True)

    assert len(ours._blocks) == 2  # the two prefixes, never cleared by a request id
    assert len(ours.header_table.dynamic_entries) == 2  # content-type and grpc-status


def failing_blocks() -> list[tuple[str, list[bytes]]]:
    """Blocks hpack refuses, each after blocks that leave a prefix kept."""
    kept = Encoder().encode([(b"grpc-status", b"0"), (b"content-type", b"application/grpc")])
    return [
        ("an index past the table", [kept, b"\x88\xfe"]),
        ("index 0", [kept, b"\x88\x80"]),
        ("a size update after a field", [kept, b"\x88\x3f\xe1\x1f"]),
        ("a literal cut short", [kept, b"\x88\x10\x05abc"]),
        ("a value cut short", [kept, b"\x88\x10\x01a\x05ab"]),
        ("an empty value length", [kept, b"\x88\x10\x01a"]),
        ("a long list", [kept, b"\x88" + b"\x10\x01a\x7e" + b"v" * 126]),
        ("invalid UTF-8", [kept, b"\x88\x10\x01a\x01\xff"]),
    ]


def test_a_huffman_coded_name_is_not_read_as_a_raw_one() -> None:
    # A name "a" in Huffman's code (0x81 0x1f), then a value of 200 bytes whose
    # 127th byte, read as a raw name's end, would make a field ending where the block ends.
    value = b"v" * 126 + bytes([200 - 127]) + b"w" * 73
    block = b"\x88\x10\x81\x1f\x7f" + bytes([200 - 127]) + value
    ours, theirs = RepeatingDecoder(), Decoder()
    ours.decode(b"\x88", raw=True)  # :status 200 kept

    assert fields(ours, block, raw=True) == fields(theirs, block, raw=True)
    assert fields(ours, block, raw=True)[1] == (b"a", value)


def test_a_huffman_coded_value_is_not_read_as_a_raw_one() -> None:
    # "a": "1" with the value in Huffman's code (0x81 0x0f), then "c" and 130 bytes. Read
    # as raw, 0x81 would be a value of 129 bytes, ending inside "c"'s value where a field
    # of its own starts and ends with the block.
    value = b"z" * 123 + b"\x00\x00\x04" + b"z" * 4
    block = b"\x88\x10\x01a\x81\x0f\x10\x01c\x7f\x03" + value
    ours, theirs = RepeatingDecoder(), Decoder()
    ours.decode(b"\x88", raw=True)  # :status 200 kept

    assert fields(ours, block, raw=True) == fields(theirs, block, raw=True)
    assert fields(ours, block, raw=True)[1:] == [(b"a", b"1"), (b"c", value)]


@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize(("case", "blocks"), failing_blocks(), ids=lambda v: str(v)[:30])
def test_the_repeating_decoder_fails_as_hpack_fails(
    case: str, blocks: list[bytes], raw: bool
) -> None:
    ours, theirs = RepeatingDecoder(max_header_list_size=200), Decoder(max_header_list_size=200)
    *before, last = blocks
    for block in before:
        ours.decode(block, raw=raw)
        theirs.decode(block, raw=raw)
        ours.decode(block, raw=raw)  # now from the kept prefix

    def outcome(decoder: Decoder) -> object:
        try:
            return list(decoder.decode(last, raw=raw))
        except HPACKDecodingError as exc:
            return type(exc)

    assert outcome(ours) == outcome(theirs)


def test_each_failure_above_is_a_failure() -> None:
    outcomes = set()
    for _, blocks in failing_blocks():
        decoder = Decoder(max_header_list_size=200)
        *before, last = blocks
        for block in before:
            decoder.decode(block, raw=True)
        try:
            decoder.decode(last, raw=False)
        except HPACKDecodingError as exc:
            outcomes.add(type(exc))
        else:
            raise AssertionError(f"hpack read {last!r}")
    assert {InvalidTableIndex, OversizedHeaderListError, HPACKDecodingError} <= outcomes


def test_the_answer_encoder_writes_per_call_values_raw_and_out_of_the_table() -> None:
    encoder, decoder = AnswerEncoder(), Decoder()
    first = encoder.encode([("grpc-status", "0"), ("x-request-id", "0123456789abcdef")])
    entries = list(encoder.header_table.dynamic_entries)
    second = encoder.encode([("grpc-status", "0"), ("x-request-id", "fedcba9876543210")])
    error = encoder.encode(
        [("grpc-status", "8"), ("grpc-message", "busy"), ("grpc-retry-pushback-ms", "120")]
    )

    assert first.endswith(b"\x10\x0cx-request-id\x100123456789abcdef")  # never indexed, raw
    assert second == b"\xbe\x10\x0cx-request-id\x10fedcba9876543210"  # grpc-status indexed
    assert list(encoder.header_table.dynamic_entries)[-len(entries) :] == entries
    assert b"\x04busy" in error
    assert b"\x03120" in error
    assert fields(decoder, first) == [("grpc-status", "0"), ("x-request-id", "0123456789abcdef")]
    assert fields(decoder, error)[1:] == [
        ("grpc-message", "busy"),
        ("grpc-retry-pushback-ms", "120"),
    ]
    assert all(type(h) is NeverIndexedHeaderTuple for h in fields(decoder, second)[1:])
    assert type(fields(decoder, second)[0]) is HeaderTuple


def test_the_answer_encoder_announces_a_table_resize_first() -> None:
    encoder, decoder = AnswerEncoder(), Decoder()
    decoder.decode(encoder.encode([("grpc-status", "0"), ("x-custom", "kept")]))
    encoder.header_table_size = 0

    block = encoder.encode([("x-request-id", "1"), ("grpc-status", "0")])

    assert block[0] == 0x20  # a size update to 0, before any field
    assert fields(decoder, block) == [("x-request-id", "1"), ("grpc-status", "0")]
    assert not decoder.header_table.dynamic_entries


async def test_a_server_s_answers_are_read_from_kept_fields_on_a_real_connection(
    start_server: StartServer, jpeg: bytes
) -> None:
    server = await start_server()
    channel = ClientChannel("127.0.0.1", server.port)
    request_ids = set()
    try:
        for _ in range(20):
            call = UnaryCall(channel, RUN_PIPELINE_PATH, Request, Response)
            assert isinstance(await call.unary(Request(image=jpeg)), Response)
            assert call.trailing_metadata is not None
            request_ids.add(call.trailing_metadata["x-request-id"])
        decoder = channel._protocol.processor.connection._connection.decoder  # type: ignore[union-attr]
    finally:
        channel.close()

    assert len(request_ids) == 20  # a new one on every call, still
    assert isinstance(decoder, RepeatingDecoder)
    assert len(decoder._blocks) == 2  # the headers' and the trailers' indexes, kept since
    assert not any(name == b"x-request-id" for name, _ in decoder.header_table.dynamic_entries)
