"""The async Client helper over the generated stub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from conftest import StartServer, encode, gradient
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from sample_models import SizeModel

from emotion import Client, Response
from emotion.client import parse_target


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
        with pytest.raises(ValueError, match="image is 2000 bytes; the limit is 1000"):
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
