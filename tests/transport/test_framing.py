"""The transport: connections, HTTP/2 framing and frame size, and hostile gRPC framing."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator

import grpc
import hyperframe.frame
import hypothesis
import hypothesis.strategies as st
import pytest
from conftest import StartServer, encode
from grpclib.client import Channel
from grpclib.client import Stream as ClientStream
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import RemoteSettingsChanged, TrailersReceived
from h2.settings import SettingCodes
from hyperframe.frame import DataFrame
from PIL import Image
from support.fuzzing import examples
from support.guarding import rss
from support.h2client import Outcome, RawConnection, framed, zeros
from support.sample_models import GatedModel

from emotion import Client, PipelineStub, Request, Response, Server, ServerConfig
from emotion.config import ConnectionAge, Limits
from emotion.contract import RUN_PIPELINE_PATH
from emotion.errors import PUSHBACK
from emotion.models.mock import MockModel
from emotion.transport.client import received_trailer
from emotion.transport.connection import QuietDataFrame, short_hex

MiB = 1024 * 1024


async def test_a_200_mb_request_is_refused_from_its_prefix_without_being_buffered(
    start_server: StartServer,
    connect: Callable[[Server], Channel],
    jpeg: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await start_server()
    declared = 200 * 1000 * 1000
    before = rss()

    def attack() -> tuple[Outcome, Outcome]:
        connection = RawConnection(server.port)
        try:
            huge = connection.call(
                RUN_PIPELINE_PATH,
                iter([framed(b"", declared=declared), *zeros(declared)]),
            )
            # The same connection still carries calls: its flow-control window was returned.
            body = bytes(Request(image=jpeg))
            after = connection.call(RUN_PIPELINE_PATH, iter([framed(body)]))
            return huge, after
        finally:
            connection.close()

    huge, after = await asyncio.to_thread(attack)
    grown = rss() - before

    assert huge.status == str(Status.RESOURCE_EXHAUSTED.value)
    assert huge.message == (
        f"request message is {declared} bytes; this server accepts at most "
        f"{server.service.limits.max_message_size}"
    )
    assert huge.sent < 8 * MiB  # the client was stopped after a window or so
    assert grown < 50 * MiB
    assert after.status == "0"
    assert await PipelineStub(connect(server)).run_pipeline(Request(image=jpeg), timeout=10)
    assert not [r for r in caplog.records if r.name.startswith("grpclib") and r.levelno >= 40]


async def test_the_size_cap_is_configurable_and_counts_the_whole_message(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    message_size = len(bytes(Request(image=jpeg)))
    exact = await start_server(limits=Limits(max_message_size=message_size))
    short = await start_server(limits=Limits(max_message_size=message_size - 1))

    assert await PipelineStub(connect(exact)).run_pipeline(Request(image=jpeg), timeout=10)
    refused = connect(short).request(
        RUN_PIPELINE_PATH, Cardinality.UNARY_UNARY, Request, Response, timeout=10
    )
    with pytest.raises(GRPCError) as caught:
        await _call(refused, Request(image=jpeg))
    assert caught.value.status is Status.RESOURCE_EXHAUSTED
    assert received_trailer(refused, PUSHBACK) == "-1"  # gRFC A6: no retry will mend it


async def _call(call: ClientStream[Request, Response], request: Request) -> Response | None:
    async with call:
        await call.send_message(request, end=True)
        return await call.recv_message()


def _one_call(port: int, body: bytes) -> Outcome:
    connection = RawConnection(port)
    try:
        return connection.call(RUN_PIPELINE_PATH, iter([body]))
    finally:
        connection.close()


async def test_a_compressed_message_is_unimplemented(start_server: StartServer) -> None:
    server = await start_server()

    outcome = await asyncio.to_thread(_one_call, server.port, framed(b"\x0a\x00", flag=1))

    assert outcome.status == str(Status.UNIMPLEMENTED.value)
    assert outcome.message == ("compressed messages are not supported; send them uncompressed")


async def test_a_message_cut_short_by_the_end_of_the_call_is_invalid_argument(
    start_server: StartServer,
) -> None:
    server = await start_server()

    cut = await asyncio.to_thread(_one_call, server.port, framed(b"\x0a\x03ab", declared=100))
    no_body = await asyncio.to_thread(_one_call, server.port, framed(b"", declared=100))
    prefix = await asyncio.to_thread(_one_call, server.port, b"\x00\x00\x00")
    bad_flag = await asyncio.to_thread(_one_call, server.port, framed(b"", flag=7))

    for outcome, message in [
        (cut, "the call ended inside a 100-byte message"),
        (no_body, "the call ended inside a 100-byte message"),
        (prefix, "the call ended inside a message's 5-byte prefix"),
        (bad_flag, "a message's compression flag is 7, not 0 or 1"),
    ]:
        assert outcome.status == str(Status.INVALID_ARGUMENT.value)
        assert outcome.message == f"request is not a valid emotion.v1.Request: {message}"


@pytest.mark.parametrize("client", ["grpclib", "grpcio"])
async def test_aged_connections_are_retired_and_clients_reconnect_without_failing(
    start_server: StartServer, jpeg: bytes, client: str
) -> None:
    server = await start_server(max_connection_age=ConnectionAge(0.3, grace=5))
    target = f"127.0.0.1:{server.port}"
    answers = 0
    if client == "grpcio":
        async with grpc.aio.insecure_channel(target) as channel:
            method = channel.unary_unary(RUN_PIPELINE_PATH)
            for _ in range(20):
                Response.parse(await method(bytes(Request(image=jpeg)), timeout=10))
                answers += 1
                await asyncio.sleep(0.1)
    else:
        async with Client(target, timeout=10) as grpclib_client:
            for _ in range(20):
                await grpclib_client.predict(jpeg)
                answers += 1
                await asyncio.sleep(0.1)

    assert answers == 20
    assert server.connections_accepted >= 3


async def test_a_busy_connection_lets_its_calls_finish_after_goaway_then_closes(
    start_server: StartServer, jpeg: bytes
) -> None:
    model = GatedModel()
    server = await start_server(model, max_connection_age=ConnectionAge(0.2, grace=30))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        method = channel.unary_unary(RUN_PIPELINE_PATH)
        call = asyncio.ensure_future(method(bytes(Request(image=jpeg)), timeout=30))
        await asyncio.to_thread(model.entered.wait, 10)
        await asyncio.sleep(0.6)  # past the age: GOAWAY sent, the call keeps running
        assert len(server.accepted_sockets()) == 1
        model.gate.set()
        answer = Response.parse(await call)
        await asyncio.sleep(1.5)  # the server closes the connection once the call is done

        assert len(answer.response) == 1
        assert server.accepted_sockets() == []


@pytest.fixture(scope="module")
def threaded_server() -> Iterator[int]:
    """A server on its own event loop in a thread, for synchronous (hypothesis) tests."""
    ready: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        async def main() -> None:
            server = Server(MockModel(), ServerConfig(port=0, threads=1))
            await server.start()
            await server.wait_loaded()
            ready.append(server.port)
            await asyncio.to_thread(stop.wait)
            await server.stop(grace=0)

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    while not ready:
        thread.join(0.05)
    yield ready[0]
    stop.set()
    thread.join(10)


@hypothesis.given(payload=st.binary(max_size=300))
# Found by earlier runs: image as a varint, a 64-bit and a 32-bit value, a varint before the image.
@hypothesis.example(payload=b"\x08\x01")
@hypothesis.example(payload=b"\x09" + bytes(8))
@hypothesis.example(payload=b"\x0d" + bytes(4))
@hypothesis.example(payload=b"\x08\x01\x0a\x03abc")
@hypothesis.settings(max_examples=examples(150))
def test_fuzz_request_messages_get_ok_or_invalid_argument_never_unknown(
    threaded_server: int, payload: bytes
) -> None:
    outcome = _one_call(threaded_server, framed(payload))

    assert outcome.status in {str(Status.OK.value), str(Status.INVALID_ARGUMENT.value)}


@hypothesis.given(
    flag=st.integers(0, 255), declared=st.integers(0, 2**32 - 1), body=st.binary(max_size=64)
)
@hypothesis.settings(max_examples=examples(100))
def test_fuzz_grpc_framing_gets_a_precise_status(
    threaded_server: int, flag: int, declared: int, body: bytes
) -> None:
    outcome = _one_call(threaded_server, framed(body, declared=declared, flag=flag))

    assert outcome.status in {
        str(s.value)
        for s in (
            Status.OK,
            Status.INVALID_ARGUMENT,
            Status.RESOURCE_EXHAUSTED,
            Status.UNIMPLEMENTED,
        )
    }


async def test_accepted_connections_have_nagle_switched_off(
    server: Server, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    # With Nagle on, each answer's last frames wait ~40 ms for the client's delayed ACK.
    await PipelineStub(connect(server)).run_pipeline(Request(image=jpeg), timeout=5)

    sockets = server.accepted_sockets()

    assert len(sockets) == 1
    assert sockets[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


@pytest.mark.parametrize("size", [0, 1, 9, 10, 11, 16384, 1_000_000])
@pytest.mark.parametrize("pad_length", [None, 0, 3, 20])
def test_frame_reprs_read_as_before_at_a_fraction_of_the_cost(
    size: int, pad_length: int | None
) -> None:
    data = (bytes(range(256)) * (size // 256 + 1))[:size]
    plain, quiet = DataFrame(1, data), QuietDataFrame(1, data)
    if pad_length is not None:
        for frame in (plain, quiet):
            frame.flags.add("PADDED")
            frame.pad_length = pad_length

    assert short_hex(data, size) == hyperframe.frame._raw_data_repr(data)
    assert quiet._body_repr() == plain._body_repr()


async def test_clients_may_send_frames_up_to_1_mib(server: Server, jpeg: bytes) -> None:
    image = encode(Image.effect_noise((600, 400), 100).convert("RGB"), "PNG")
    assert 200_000 < len(image) < 1024 * 1024

    settings, frames, status = await asyncio.to_thread(_raw_h2_call, server.port, image)

    assert settings[SettingCodes.MAX_FRAME_SIZE] == 1024 * 1024
    assert frames == 1  # the whole request in one DATA frame
    assert status == "0"


def _raw_h2_call(port: int, image: bytes) -> tuple[dict[int, int], int, str | None]:
    """One call over a bare h2 client: the server's settings, DATA frames sent, grpc-status."""
    connection = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    connection.initiate_connection()
    settings: dict[int, int] = {}
    status = None
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(connection.data_to_send())
        while not settings:
            for event in connection.receive_data(sock.recv(65536)):
                if isinstance(event, RemoteSettingsChanged):
                    settings.update({k: v.new_value for k, v in event.changed_settings.items()})
            sock.sendall(connection.data_to_send())
        stream = connection.get_next_available_stream_id()
        connection.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", RUN_PIPELINE_PATH),
                (":authority", f"127.0.0.1:{port}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        body = bytes(Request(image=image))
        message = b"\x00" + len(body).to_bytes(4, "big") + body
        frames = 0
        while message:
            chunk = message[: connection.max_outbound_frame_size]
            message = message[len(chunk) :]
            connection.send_data(stream, chunk, end_stream=not message)
            frames += 1
        sock.sendall(connection.data_to_send())
        while status is None:
            data = sock.recv(65536)
            if not data:
                break
            for event in connection.receive_data(data):
                if isinstance(event, TrailersReceived):
                    status = {str(k): str(v) for k, v in event.headers}.get("grpc-status")
            sock.sendall(connection.data_to_send())
    return settings, frames, status
