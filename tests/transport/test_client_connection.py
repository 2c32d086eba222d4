"""The client's h2 connection: the bytes h2 would send, the events h2 would give, fewer copies."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from h2.config import DummyLogger, H2Configuration
from h2.connection import H2Connection
from h2.exceptions import ProtocolError
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes
from hpack import NeverIndexedHeaderTuple
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from support.h2client import REQUEST_HEADERS as HEADERS

from emotion.transport.client_connection import AnswerFrameBuffer, H2ClientConnection


def handshaken(client: H2Connection, server: H2Connection | None = None) -> H2Connection:
    """``client`` after a server's SETTINGS (1 MiB frames, as emotion serve sends) and windows."""
    server = server or H2Connection(H2Configuration(client_side=False))
    server.initiate_connection()
    server.update_settings(
        {SettingCodes.MAX_FRAME_SIZE: 2**20, SettingCodes.INITIAL_WINDOW_SIZE: 2**24}
    )
    server.increment_flow_control_window(2**24)
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    return client


def calls(client: H2Connection, take: Callable[[H2Connection], bytes]) -> bytes:
    """Calls as grpclib makes them, and more: what the client sends, taken with ``take``."""
    sent = take(client)
    for n, size in enumerate((5, 70_000, 1_500_000)):
        stream_id = client.get_next_available_stream_id()
        headers = [*HEADERS, NeverIndexedHeaderTuple(b"grpc-timeout", f"{n}m".encode())]
        client.send_headers(stream_id, headers)
        sent += take(client)
        message = bytes([n]) * size
        while message:  # in frames as the window and the frame size allow
            window = client.local_flow_control_window(stream_id)
            length = min(window, client.max_outbound_frame_size, len(message))
            chunk, message = message[:length], message[length:]
            client.send_data(stream_id, chunk, end_stream=not message)
        client.ping(b"12345678")
        sent += take(client)
    stream_id = client.get_next_available_stream_id()
    client.send_headers(stream_id, HEADERS, priority_weight=200, priority_depends_on=0)
    client.end_stream(stream_id)
    stream_id = client.get_next_available_stream_id()
    client.send_headers(stream_id, HEADERS)
    client.send_data(stream_id, b"padded", pad_length=3)
    client.send_data(stream_id, b"then not")
    client.end_stream(stream_id)  # an empty DATA frame
    return sent + take(client)


def test_the_client_connection_sends_the_bytes_h2_sends() -> None:
    config = H2Configuration(client_side=True, header_encoding="ascii")

    def in_pieces(client: H2Connection) -> bytes:
        assert isinstance(client, H2ClientConnection)
        return b"".join(client.chunks_to_send())

    def in_one(client: H2Connection) -> bytes:
        return client.data_to_send()

    expected = calls(handshaken(H2Connection(config)), in_one)

    assert calls(handshaken(H2ClientConnection(config)), in_pieces) == expected
    assert calls(handshaken(H2ClientConnection(config)), in_one) == expected


class RecordingLogger(DummyLogger):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def trace(self, *args: Any, **kwargs: Any) -> None:
        self.lines.append(args[0] % args[1:])


def answered(client: H2Connection) -> list[Any]:
    """The events of an answer (headers, message, trailers) to the client's first call."""
    server = H2Connection(H2Configuration(client_side=False, header_encoding="ascii"))
    handshaken(client, server)
    server.receive_data(client.data_to_send())
    stream_id = client.get_next_available_stream_id()
    client.send_headers(stream_id, HEADERS, end_stream=True)
    server.receive_data(client.data_to_send())
    server.send_headers(stream_id, [(":status", "200"), ("content-type", "application/grpc")])
    server.send_data(stream_id, b"\0\0\0\0\x02ab")
    server.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)
    server.increment_flow_control_window(100)
    return client.receive_data(server.data_to_send())


@pytest.mark.parametrize("logger", [None, RecordingLogger])
def test_answers_read_give_h2s_events_and_its_log_lines(
    logger: type[RecordingLogger] | None,
) -> None:
    ours_logger = logger() if logger else None
    theirs_logger = logger() if logger else None
    ours = H2ClientConnection(H2Configuration(client_side=True, logger=ours_logger))
    theirs = H2Connection(H2Configuration(client_side=True, logger=theirs_logger))

    events = answered(ours)

    assert [repr(e) for e in events] == [repr(e) for e in answered(theirs)]
    assert [type(e).__name__ for e in events] == [
        "ResponseReceived",
        "DataReceived",
        "TrailersReceived",
        "StreamEnded",
        "WindowUpdated",
    ]
    if ours_logger is not None and theirs_logger is not None:
        assert ours_logger.lines == theirs_logger.lines
        assert any(line.startswith("Received frame: HeadersFrame(") for line in ours_logger.lines)


def random_frames(rnd: random.Random) -> bytes:
    """Frames of every kind a client may receive, well formed or not, as one byte string."""

    def one() -> bytearray:
        stream_id = rnd.choice([0, 1, 3, 2**31 - 1])
        flags = set()
        pad = rnd.randint(0, 5)
        roll = rnd.random()
        if roll < 0.3:
            padded = rnd.random() < 0.2
            frame: Frame = DataFrame(
                stream_id or 1, data=rnd.randbytes(rnd.randint(0, 80)), pad_length=pad * padded
            )
            flags.update(["PADDED"] if padded else [])
        elif roll < 0.6:
            flags.update(rnd.sample(["END_HEADERS", "PADDED", "PRIORITY"], rnd.randint(0, 3)))
            frame = HeadersFrame(
                stream_id or 1,
                data=rnd.randbytes(rnd.randint(0, 80)),
                pad_length=pad * ("PADDED" in flags),
                depends_on=rnd.randint(0, 9),
                stream_weight=rnd.randint(0, 255),
                exclusive=rnd.random() < 0.5,
            )
        elif roll < 0.7:
            frame = ContinuationFrame(stream_id or 1, data=rnd.randbytes(rnd.randint(0, 20)))
            if rnd.random() < 0.7:
                flags.add("END_HEADERS")
        else:
            frame = rnd.choice(
                [
                    WindowUpdateFrame(stream_id, window_increment=rnd.randint(1, 2**20)),
                    PingFrame(0, opaque_data=rnd.randbytes(8)),
                    SettingsFrame(0, settings={4: 2**20}),
                    RstStreamFrame(stream_id or 1, error_code=rnd.randint(0, 13)),
                    GoAwayFrame(0, last_stream_id=3, error_code=0),
                ]
            )
        if isinstance(frame, (DataFrame, HeadersFrame)) and rnd.random() < 0.5:
            flags.add("END_STREAM")
        for flag in flags:
            frame.flags.add(flag)
        data = bytearray(frame.serialize())
        if rnd.random() < 0.1:
            data[5] |= 0x80  # the reserved bit, which a reader ignores
        if rnd.random() < 0.05:
            data[3] = 0  # the frame read as DATA (on stream 0, for a connection frame)
        return data

    return b"".join(one() for _ in range(rnd.randint(1, 30)))


@pytest.mark.parametrize("seed", range(300))
def test_an_answers_frames_are_built_as_hyperframe_builds_them(seed: int) -> None:
    data = random_frames(random.Random(seed))
    cuts = random.Random(seed)
    ours: list[Any] = []
    theirs: list[Any] = []
    for buffer, seen in ((AnswerFrameBuffer(), ours), (FrameBuffer(), theirs)):
        rest = data
        buffer.max_frame_size = 64
        try:
            while rest:
                cut = cuts.randint(1, 60)
                buffer.add_data(rest[:cut])
                rest = rest[cut:]
                for frame in buffer:
                    attributes = {k: v for k, v in vars(frame).items() if k != "flags"}
                    seen.append((type(frame), sorted(frame.flags), attributes))
        except (ProtocolError, HyperframeError) as exc:  # h2 lets some of hyperframe's through
            seen.append(type(exc))
        cuts = random.Random(seed)  # the same pieces for both

    assert ours == theirs
