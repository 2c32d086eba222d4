"""The client's side of the grown contract: options, Describe, and the server's own limit."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator

import grpclib.const
import grpclib.server
import pytest
from conftest import StartServer, encode, gradient
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream
from support.sample_models import ConfidentModel
from support.served import start_serving

from emotion import Client, Limits, Request, Response, SyncClient
from emotion.codec import ProtobufCodec
from emotion.config import DEFAULT_MAX_IMAGE_SIZE
from emotion.contract import (
    DESCRIBE_PATH,
    RUN_PIPELINE_PATH,
    DescribeRequest,
    DescribeResponse,
    ModelVersion,
    Options,
)

MIB = 1024 * 1024


def described(caplog: pytest.LogCaptureFixture) -> int:
    """How many Describe calls the test's servers answered."""
    return sum("method=/emotion.v1.Pipeline/Describe " in r.getMessage() for r in caplog.records)


@pytest.fixture
def calls_logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="emotion.serving.calls")
    return caplog


def places(response: Response) -> list[int]:
    return [round(face.bbox.x1) for face in response.response if face.bbox is not None]


async def test_predict_and_stream_send_the_options(start_server: StartServer) -> None:
    server = await start_server(ConfidentModel())
    image = encode(gradient(), "PNG")
    one = Options(max_faces=1)

    async with Client(f"127.0.0.1:{server.port}", timeout=10) as client:
        plain = await client.predict(image)
        first = await client.predict(image, options=one)
        streamed = [r async for r in client.stream([image, image], options=one)]

    assert places(plain) == [1, 2, 3, 4]
    assert places(first) == [2]
    assert [places(r) for r in streamed] == [[2], [2]]
    assert first.model == ModelVersion(name="ConfidentModel", version="2.5.0")


async def test_describe_tells_the_model_and_the_limits(start_server: StartServer) -> None:
    server = await start_server(ConfidentModel(), limits=Limits(max_message_size=3 * MIB))

    async with Client(f"127.0.0.1:{server.port}", timeout=10) as client:
        answer = await client.describe()

    assert answer.model is not None
    assert (answer.model.name, answer.model.version) == ("ConfidentModel", "2.5.0")
    assert answer.limits is not None
    assert answer.limits.max_message_size == 3 * MIB


async def test_the_sync_client_sends_options_and_describes(start_server: StartServer) -> None:
    server = await start_server(ConfidentModel())
    image = encode(gradient(), "PNG")

    def calls() -> tuple[Response, list[Response], str]:
        with SyncClient(f"127.0.0.1:{server.port}", timeout=10) as client:
            one = Options(max_faces=1)
            answer = client.predict(image, options=one)
            streamed = list(client.stream([image], options=one))
            description = client.describe()
            assert description.model is not None
            return answer, streamed, description.model.name

    answer, streamed, name = await asyncio.to_thread(calls)

    assert places(answer) == [2]
    assert [places(r) for r in streamed] == [[2]]
    assert name == "ConfidentModel"


async def test_images_within_the_default_go_without_asking_the_server(
    start_server: StartServer, calls_logged: pytest.LogCaptureFixture
) -> None:
    server = await start_server(ConfidentModel())

    async with Client(f"127.0.0.1:{server.port}", timeout=10) as client:
        for _ in range(3):
            await client.predict(encode(gradient(), "PNG"))
        streamed = [r async for r in client.stream([encode(gradient(), "PNG")])]

    assert len(streamed) == 1
    assert described(calls_logged) == 0


async def test_a_larger_image_goes_to_a_server_that_says_it_takes_it(
    start_server: StartServer, calls_logged: pytest.LogCaptureFixture
) -> None:
    server = await start_server(limits=Limits(max_message_size=24 * MIB))
    large = bytes(17 * MIB)  # not an image: the server says so, once it has it all

    async with Client(f"127.0.0.1:{server.port}", timeout=30) as client:
        for _ in range(2):
            with pytest.raises(grpclib.exceptions.GRPCError) as unread:
                await client.predict(large)
            assert unread.value.status is grpclib.const.Status.INVALID_ARGUMENT
        with pytest.raises(grpclib.exceptions.GRPCError):
            _ = [r async for r in client.stream([large])]
        size = client.max_image_size

    assert described(calls_logged) == 1  # once per connection, however many images
    assert size == 24 * MIB - 32


async def test_an_image_over_the_servers_limit_is_refused_before_it_is_sent(
    start_server: StartServer, calls_logged: pytest.LogCaptureFixture
) -> None:
    server = await start_server(limits=Limits(max_message_size=MIB))

    async with Client(f"127.0.0.1:{server.port}", timeout=10) as client:
        with pytest.raises(ValueError, match=r"the server takes at most 1048544 ") as large:
            await client.predict(bytes(17 * MIB))
        # Known now: a smaller image over it is refused without asking again.
        with pytest.raises(ValueError, match="image is 2097152 bytes; the server takes at most"):
            await client.predict(bytes(2 * MIB))

    assert "--max-message-size" in str(large.value)
    assert described(calls_logged) == 1
    assert not [r for r in calls_logged.records if "RunPipeline" in r.getMessage()]


async def test_a_limit_given_to_the_client_is_kept_and_the_server_never_asked(
    start_server: StartServer, calls_logged: pytest.LogCaptureFixture
) -> None:
    server = await start_server(limits=Limits(max_message_size=64 * MIB))

    async with Client(f"127.0.0.1:{server.port}", max_image_size=17 * MIB) as client:
        with pytest.raises(ValueError, match="this client sends at most 17825792"):
            await client.predict(bytes(18 * MIB))
        size = client.max_image_size

    assert size == 17 * MIB
    assert described(calls_logged) == 0


class _OldPipeline:
    """A server of the contract before Describe: RunPipeline, one empty answer.

    It answers Describe as grpclib answers a method it does not have (the
    status and message of its "Method not found"), and counts how often it
    was asked, which an unknown method would not let the test see.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.asked = 0

    async def _answer(self, stream: Stream[Request, Response]) -> None:
        self.calls += 1
        await stream.recv_message()
        await stream.send_message(Response())

    async def _describe(self, stream: Stream[DescribeRequest, DescribeResponse]) -> None:
        self.asked += 1
        raise GRPCError(Status.UNIMPLEMENTED, "Method not found")

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        unary = grpclib.const.Cardinality.UNARY_UNARY
        return {
            RUN_PIPELINE_PATH: grpclib.const.Handler(self._answer, unary, Request, Response),
            DESCRIBE_PATH: grpclib.const.Handler(
                self._describe, unary, DescribeRequest, DescribeResponse
            ),
        }


@pytest.fixture
async def old_server() -> AsyncIterator[tuple[int, _OldPipeline]]:
    service = _OldPipeline()
    server = grpclib.server.Server([service], codec=ProtobufCodec())
    listener = socket.create_server(("127.0.0.1", 0))
    await server.start(sock=listener)
    yield int(listener.getsockname()[1]), service
    server.close()
    await server.wait_closed()


async def test_a_server_older_than_describe_keeps_the_default_and_is_asked_once(
    old_server: tuple[int, _OldPipeline],
) -> None:
    port, service = old_server

    async with Client(f"127.0.0.1:{port}", timeout=10) as client:
        for _ in range(2):
            with pytest.raises(ValueError, match="did not say it takes more"):
                await client.predict(bytes(DEFAULT_MAX_IMAGE_SIZE + 1))
        answer = await client.predict(bytes(10))

    assert answer == Response()
    assert (service.asked, service.calls) == (1, 1)
    assert client.max_image_size == DEFAULT_MAX_IMAGE_SIZE


@pytest.mark.subprocess
async def test_emotion_serve_describes_the_model_its_inference_processes_run() -> None:
    # The worker never imports the model: what it says comes from the process.
    served = await start_serving("--model", "support.sample_models:DigestModel")
    try:
        async with Client(served.target, timeout=10) as client:
            answer = await client.describe()
            response = await client.predict(encode(gradient(), "PNG"))
    finally:
        await served.stop()

    assert answer.model is not None
    assert (answer.model.name, answer.model.version) == ("DigestModel", "0.3")
    assert answer.model.weights_digest.startswith("sha256:")
    assert answer.model.fills_landmarks
    assert response.model == ModelVersion(name="DigestModel", version="0.3")
