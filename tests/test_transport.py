"""The transport under hostile framing: oversized, compressed and truncated messages."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import hypothesis
import hypothesis.strategies as st
import pytest
from conftest import StartServer
from grpclib.client import Channel
from grpclib.const import Status
from h2client import Outcome, RawConnection, framed, zeros

from emotion import Client, PipelineStub, Request, Response, Server
from emotion.contract import RUN_PIPELINE_PATH

MiB = 1024 * 1024


def rss() -> int:
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


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
    from grpclib.exceptions import GRPCError

    from emotion.config import Limits

    message_size = len(bytes(Request(image=jpeg)))
    exact = await start_server(limits=Limits(max_message_size=message_size))
    short = await start_server(limits=Limits(max_message_size=message_size - 1))

    assert await PipelineStub(connect(exact)).run_pipeline(Request(image=jpeg), timeout=10)
    with pytest.raises(GRPCError) as caught:
        await PipelineStub(connect(short)).run_pipeline(Request(image=jpeg), timeout=10)
    assert caught.value.status is Status.RESOURCE_EXHAUSTED


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
    prefix = await asyncio.to_thread(_one_call, server.port, b"\x00\x00\x00")
    bad_flag = await asyncio.to_thread(_one_call, server.port, framed(b"", flag=7))

    for outcome, message in [
        (cut, "the call ended inside a 100-byte message"),
        (prefix, "the call ended inside a message's 5-byte prefix"),
        (bad_flag, "a message's compression flag is 7, not 0 or 1"),
    ]:
        assert outcome.status == str(Status.INVALID_ARGUMENT.value)
        assert outcome.message == f"request is not a valid emotion.v1.Request: {message}"


@pytest.mark.parametrize("client", ["grpclib", "grpcio"])
async def test_aged_connections_are_retired_and_clients_reconnect_without_failing(
    start_server: StartServer, jpeg: bytes, client: str
) -> None:
    from emotion.config import ConnectionAge

    server = await start_server(max_connection_age=ConnectionAge(0.3, grace=5))
    target = f"127.0.0.1:{server.port}"
    answers = 0
    if client == "grpcio":
        import grpc

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
    import grpc
    from sample_models import GatedModel

    from emotion.config import ConnectionAge

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
    import threading

    from emotion import ServerConfig
    from emotion.models.mock import MockModel

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
@hypothesis.settings(max_examples=150, deadline=None)
def test_fuzz_request_messages_get_ok_or_invalid_argument_never_unknown(
    threaded_server: int, payload: bytes
) -> None:
    outcome = _one_call(threaded_server, framed(payload))

    assert outcome.status in {str(Status.OK.value), str(Status.INVALID_ARGUMENT.value)}


@hypothesis.given(
    flag=st.integers(0, 255), declared=st.integers(0, 2**32 - 1), body=st.binary(max_size=64)
)
@hypothesis.settings(max_examples=100, deadline=None)
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
