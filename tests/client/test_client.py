"""The async Client helper over the generated stub."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpclib.const
import grpclib.server
import pytest
from conftest import StartServer, encode, gradient
from grpclib.const import Cardinality, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from grpclib.server import Stream
from support.sample_models import SizeModel

from emotion import Client, Response
from emotion.client.client import parse_target
from emotion.codec import InvalidMessage
from emotion.contract import RUN_PIPELINE_PATH, STREAM_PIPELINE_PATH


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("127.0.0.1:50051", ("127.0.0.1", 50051)),
        ("localhost:1", ("localhost", 1)),
        ("[::1]:8080", ("::1", 8080)),
        ("emotion.internal.example:443", ("emotion.internal.example", 443)),
    ],
)
def test_parse_target_splits_host_and_port(target: str, expected: tuple[str, int]) -> None:
    assert parse_target(target) == expected


@pytest.mark.parametrize(
    "target", ["localhost", ":50051", "host:", "host:http", "host:0", "host:70000"]
)
def test_parse_target_rejects_malformed_targets(target: str) -> None:
    with pytest.raises(ValueError, match="target"):
        parse_target(target)


async def test_predict_returns_the_response_and_raises_grpc_errors(
    start_server: StartServer, jpeg: bytes
) -> None:
    server = await start_server(SizeModel())

    async with Client(f"127.0.0.1:{server.port}", timeout=10) as client:
        response = await client.predict(jpeg)
        with pytest.raises(GRPCError) as caught:
            await client.predict(b"")

    assert response.response[0].bbox is not None
    assert (response.response[0].bbox.x2, response.response[0].bbox.y2) == (320, 240)
    assert caught.value.status is Status.INVALID_ARGUMENT


class _AnyBytes(CodecBase):
    """Lets a test server answer with bytes that no honest server would send."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


class _HostileService:
    def __init__(self, answer: bytes) -> None:
        self.answer = answer

    async def _unary(self, stream: Stream[bytes, bytes]) -> None:
        await stream.recv_message()
        await stream.send_message(self.answer)

    async def _stream(self, stream: Stream[bytes, bytes]) -> None:
        async for _ in stream:
            await stream.send_message(self.answer)

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        unary, streaming = Cardinality.UNARY_UNARY, Cardinality.STREAM_STREAM
        return {
            RUN_PIPELINE_PATH: grpclib.const.Handler(self._unary, unary, bytes, bytes),
            STREAM_PIPELINE_PATH: grpclib.const.Handler(self._stream, streaming, bytes, bytes),
        }


# response[0].bbox.x1 as four bytes instead of a float.
_BBOX_OF_BYTES = b"\x0a\x08" + b"\x0a\x06" + b"\x0a\x04abcd"


@pytest.fixture
async def hostile_port() -> AsyncIterator[int]:
    server = grpclib.server.Server([_HostileService(_BBOX_OF_BYTES)], codec=_AnyBytes())
    listener = socket.create_server(("127.0.0.1", 0))
    await server.start(sock=listener)
    yield int(listener.getsockname()[1])
    server.close()
    await server.wait_closed()


async def test_an_answer_that_is_not_a_valid_response_raises_instead_of_misleading(
    hostile_port: int,
) -> None:
    expected = (
        "not a valid emotion.v1.Response: response[0].bbox.x1 (field 1) has wire type "
        "length-delimited, but it is a float (32-bit) field; "
        "was the sender built from another .proto?"
    )
    async with Client(f"127.0.0.1:{hostile_port}", timeout=10) as client:
        with pytest.raises(InvalidMessage) as unary:
            await client.predict(b"image")
        with pytest.raises(InvalidMessage) as streamed:
            async for _ in client.stream([b"image"]):
                pass

    assert str(unary.value) == str(streamed.value) == expected


async def test_client_stream_takes_an_async_feed(start_server: StartServer) -> None:
    server = await start_server(SizeModel())

    async def camera() -> AsyncIterator[bytes]:
        for width in (10, 20, 30):
            await asyncio.sleep(0.01)
            yield encode(gradient(width, 10), "PNG")

    async with Client(f"127.0.0.1:{server.port}", timeout=30) as client:
        answers = [a async for a in client.stream(camera())]

    assert [a.response[0].bbox.x2 for a in answers if a.response[0].bbox] == [10, 20, 30]


async def test_the_client_refuses_an_oversized_image_before_sending_it(
    start_server: StartServer,
) -> None:
    server = await start_server()

    async with Client(f"127.0.0.1:{server.port}", max_image_size=1000) as client:
        with pytest.raises(ValueError, match="image is 2000 bytes; this client sends at most 1000"):
            await client.predict(bytes(2000))


async def test_client_stream_raises_what_the_images_raised_after_the_answers_so_far(
    start_server: StartServer,
) -> None:
    server = await start_server(SizeModel())

    def frames_then_failure() -> Iterator[bytes]:
        yield encode(gradient(10, 10), "PNG")
        yield encode(gradient(20, 10), "PNG")
        raise OSError("the camera went away")

    answers: list[Response] = []

    async def collect(client: Client) -> None:
        async for answer in client.stream(frames_then_failure()):
            answers.append(answer)

    async with Client(f"127.0.0.1:{server.port}", timeout=10) as client:
        with pytest.raises(OSError, match="the camera went away"):
            await collect(client)

    assert len(answers) == 2
