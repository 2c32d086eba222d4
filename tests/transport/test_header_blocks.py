"""HPACK as our connections use it: the same blocks hpack gives, less often coded."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from grpclib.metadata import USER_AGENT
from hpack import (
    Decoder,
    Encoder,
    NeverIndexedHeaderTuple,
)

from emotion.transport.header_blocks import RepeatingEncoder

REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"https"),
    (b":path", b"/emotion.v1.Pipeline/RunPipeline"),
    (b":authority", b"emotion.example:443"),
    (b"te", b"trailers"),
    (b"content-type", b"application/grpc"),
    (b"user-agent", USER_AGENT.encode()),
]


def fields(decoder: Decoder, block: bytes, *, raw: bool = False) -> list[Any]:
    """The header fields hpack's API gives (an iterable), as a list."""
    return list(decoder.decode(block, raw=raw))


def block_sequence(seed: int) -> list[tuple[list[Any], int | None]]:
    """Header lists as a client sends them, with deadlines, metadata, and table resizes."""
    rnd = random.Random(seed)
    blocks: list[tuple[list[Any], int | None]] = []
    for n in range(2000):
        headers: list[Any] = list(REQUEST)
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
