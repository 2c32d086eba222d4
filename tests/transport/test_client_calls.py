"""The client's channel and unary call: what grpclib's own would do, with fewer writes.

A grpclib server in this process answers each way a call can end; each call
is made once through grpclib's Stream on grpclib's Channel and once as a
UnaryCall on a ClientChannel, and both must end the same way.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import grpclib.const
import grpclib.server
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.events import RecvRequest, RecvTrailingMetadata, SendRequest, listen
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.metadata import Deadline
from grpclib.server import Stream

from emotion.transport.client import ClientChannel, UnaryCall
from emotion.transport.client_connection import H2ClientConnection
from emotion.transport.writes import CoalescingTransport

SERVING = HealthCheckResponse(status=HealthCheckResponse.SERVING)
Call = Stream[HealthCheckRequest, HealthCheckResponse]


class Scripted:
    """A service whose methods end a call each in its own way; it keeps what it was sent."""

    def __init__(self) -> None:
        self.requests: list[RecvRequest] = []

    async def answer(self, stream: Call) -> None:
        await stream.recv_message()
        await stream.send_message(SERVING)

    async def refuse(self, stream: Call) -> None:
        raise GRPCError(Status.NOT_FOUND, "no such thing", None)  # trailers alone

    async def answer_then_fail(self, stream: Call) -> None:
        await stream.recv_message()
        await stream.send_message(SERVING)
        raise GRPCError(Status.DATA_LOSS, "lost the rest")

    async def answer_nothing(self, stream: Call) -> None:
        await stream.recv_message()

    async def take_long(self, stream: Call) -> None:
        await asyncio.sleep(10)

    async def reset(self, stream: Call) -> None:
        await stream.recv_message()
        await stream.cancel()

    async def headers_then_reset(self, stream: Call) -> None:
        await stream.recv_message()
        await stream.send_initial_metadata()
        await stream.cancel()

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        methods: list[Callable[[Call], Coroutine[Any, Any, None]]] = [
            self.answer,
            self.refuse,
            self.answer_then_fail,
            self.answer_nothing,
            self.take_long,
            self.reset,
            self.headers_then_reset,
        ]
        # grpclib's server ends a unary call without an answer as an error: streaming may.
        streaming = {"answer_nothing"}
        return {
            f"/test.Scripted/{method.__name__}": grpclib.const.Handler(
                method,
                Cardinality.UNARY_STREAM
                if method.__name__ in streaming
                else Cardinality.UNARY_UNARY,
                HealthCheckRequest,
                HealthCheckResponse,
            )
            for method in methods
        }


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[Scripted, int]]:
    service = Scripted()
    server = grpclib.server.Server([service])

    async def keep(event: RecvRequest) -> None:
        service.requests.append(event)

    listen(server, RecvRequest, keep)
    listener = socket.create_server(("127.0.0.1", 0))
    await server.start(sock=listener)
    yield service, int(listener.getsockname()[1])
    server.close()
    await server.wait_closed()


async def through_grpclib(channel: Channel, path: str, deadline: Deadline) -> Any:
    call = channel.request(
        path, Cardinality.UNARY_UNARY, HealthCheckRequest, HealthCheckResponse, deadline=deadline
    )
    async with call:
        await call.send_message(HealthCheckRequest(service="x"), end=True)
        return await call.recv_message()


async def through_unary_call(channel: Channel, path: str, deadline: Deadline) -> Any:
    call = UnaryCall(channel, path, HealthCheckRequest, HealthCheckResponse, deadline=deadline)
    return await call.unary(HealthCheckRequest(service="x"))


async def outcome(made: Awaitable[Any]) -> tuple[Any, ...]:
    try:
        answer = await made
    except GRPCError as exc:
        return ("GRPCError", exc.status, exc.message)
    except Exception as exc:
        return (type(exc).__name__,)
    return ("answer", answer)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("answer", ("answer", SERVING)),
        ("refuse", ("GRPCError", Status.NOT_FOUND, "no such thing")),
        ("answer_then_fail", ("GRPCError", Status.DATA_LOSS, "lost the rest")),
        ("answer_nothing", ("answer", None)),
        ("take_long", ("TimeoutError",)),
        ("reset", ("StreamTerminatedError",)),
        ("headers_then_reset", ("StreamTerminatedError",)),
    ],
)
async def test_a_unary_call_ends_as_grpclibs_stream_does(
    scripted: tuple[Scripted, int], method: str, expected: tuple[Any, ...]
) -> None:
    _, port = scripted
    path = f"/test.Scripted/{method}"
    theirs, ours = Channel("127.0.0.1", port), ClientChannel("127.0.0.1", port)
    try:
        by_grpclib = await outcome(through_grpclib(theirs, path, Deadline.from_timeout(0.5)))
        by_us = await outcome(through_unary_call(ours, path, Deadline.from_timeout(0.5)))
        again = await outcome(
            through_unary_call(ours, "/test.Scripted/answer", Deadline.from_timeout(5))
        )
    finally:
        theirs.close()
        ours.close()

    assert by_grpclib == expected
    assert by_us == expected
    assert again == ("answer", SERVING)  # the connection is still good after any of it


async def test_a_unary_call_sends_the_request_grpclibs_stream_sends(
    scripted: tuple[Scripted, int],
) -> None:
    service, port = scripted
    path = "/test.Scripted/answer"
    metadata = {"authorization": "Bearer x", "x-request-id": "abc"}
    theirs, ours = Channel("127.0.0.1", port), ClientChannel("127.0.0.1", port)
    try:
        call = theirs.request(
            path,
            Cardinality.UNARY_UNARY,
            HealthCheckRequest,
            HealthCheckResponse,
            timeout=5,
            metadata=metadata,
        )
        async with call:
            await call.send_message(HealthCheckRequest(service="x"), end=True)
            await call.recv_message()
        for _ in range(3):  # the headers again, from HPACK's table
            mine = UnaryCall(
                ours,
                path,
                HealthCheckRequest,
                HealthCheckResponse,
                deadline=Deadline.from_timeout(5),
                metadata=metadata,
            )
            await mine.unary(HealthCheckRequest(service="x"))
        await UnaryCall(ours, path, HealthCheckRequest, HealthCheckResponse).unary(
            HealthCheckRequest(service="x")
        )
    finally:
        theirs.close()
        ours.close()

    def seen(event: RecvRequest) -> tuple[Any, ...]:
        remaining = None if event.deadline is None else round(event.deadline.time_remaining())
        return (
            event.method_name,
            remaining,
            event.content_type,
            event.user_agent,
            sorted(event.metadata.items()),
        )

    by_grpclib, *by_us, no_deadline = [seen(event) for event in service.requests]
    assert by_us == [by_grpclib] * 3
    assert no_deadline == (path, None, *by_grpclib[2:4], [])


async def test_grpclibs_events_are_dispatched_for_a_unary_call(
    scripted: tuple[Scripted, int],
) -> None:
    service, port = scripted
    statuses: list[tuple[Status, str | None]] = []

    async def add_metadata(event: SendRequest) -> None:
        event.metadata["x-added"] = "by a listener"

    async def keep_status(event: RecvTrailingMetadata) -> None:
        statuses.append((event.status, event.status_message))

    channel = ClientChannel("127.0.0.1", port)
    listen(channel, SendRequest, add_metadata)
    listen(channel, RecvTrailingMetadata, keep_status)
    try:
        await UnaryCall(
            channel, "/test.Scripted/answer", HealthCheckRequest, HealthCheckResponse
        ).unary(HealthCheckRequest())
        with pytest.raises(GRPCError):
            await UnaryCall(
                channel, "/test.Scripted/refuse", HealthCheckRequest, HealthCheckResponse
            ).unary(HealthCheckRequest())
    finally:
        channel.close()

    assert [event.metadata.get("x-added") for event in service.requests] == ["by a listener"] * 2
    assert statuses == [(Status.OK, None), (Status.NOT_FOUND, "no such thing")]


class Sends:
    """asyncio's transport under a CoalescingTransport, counting the writes that reach it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.transport.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.transport, name)


async def test_calls_started_together_go_out_in_one_write(
    scripted: tuple[Scripted, int],
) -> None:
    _, port = scripted
    path = "/test.Scripted/answer"
    channel = ClientChannel("127.0.0.1", port)
    try:
        await UnaryCall(channel, path, HealthCheckRequest, HealthCheckResponse).unary(
            HealthCheckRequest()
        )  # connected
        assert channel._protocol is not None
        connection = channel._protocol.connection
        assert isinstance(connection._connection, H2ClientConnection)
        # Count the writes that reach asyncio's transport, under ours if there is one.
        owner: Any = connection
        if isinstance(connection._transport, CoalescingTransport):
            owner = connection._transport
        sends = Sends(owner._transport)
        owner._transport = sends
        requests = [HealthCheckRequest(service=str(n) * 100_000) for n in range(8)]

        answers = await asyncio.gather(
            *(
                UnaryCall(channel, path, HealthCheckRequest, HealthCheckResponse).unary(r)
                for r in requests
            )
        )
    finally:
        channel.close()

    assert answers == [SERVING] * 8
    # Eight calls' headers and messages: one write, then any WINDOW_UPDATEs for the answers.
    assert sends.writes <= 3
