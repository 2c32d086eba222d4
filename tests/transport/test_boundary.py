"""The grpclib, h2 and hyperframe internals emotion.transport relies on, against those installed.

When a pinned library is upgraded, each test here fails with the name of the
internal that moved; emotion/transport/__init__.py lists them all. The
objects checked are made for real: a GrpcServer on 127.0.0.1 and a grpclib
client that calls it.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import inspect
import json
import re
import socket
import subprocess
import sys
import types
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpclib.client
import grpclib.protocol
import grpclib.server
import grpclib.utils
import h2.connection
import h2.stream
import hpack
import hyperframe.frame
import pytest
from conftest import subprocess_env
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Cardinality
from grpclib.const import Handler as MethodHandler
from grpclib.encoding.base import CodecBase
from grpclib.events import RecvMessage, listen
from grpclib.exceptions import StreamTerminatedError
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.protocol import Buffer, H2Protocol
from h2.config import DummyLogger, H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.events import DataReceived
from h2.frame_buffer import FrameBuffer
from hyperframe.frame import DataFrame, Frame

import emotion.transport
from emotion.transport.client import received_trailer, turned_away
from emotion.transport.connection import H2ServerConnection, QuietDataFrame
from emotion.transport.handler import CallHandler
from emotion.transport.messages import receive_message
from emotion.transport.server import GRPCLIB_PROTOCOL_FACTORY, GrpcServer, normalized_source
from emotion.transport.trailers import add_trailer
from emotion.transport.writes import CoalescingTransport

ECHO_PATH = "/test.Echo/Echo"
SEE = "see emotion/transport/__init__.py for what relies on it"


@dataclass(frozen=True)
class Expect:
    """``owner.attr`` exists and passes ``check``; ``label`` names it as the package docs do."""

    label: str
    owner: object
    attr: str
    check: Callable[[object], bool]
    expected: str


def of_type(kind: type | tuple[type, ...]) -> Callable[[object], bool]:
    return lambda value: isinstance(value, kind)


FUNCTION = of_type(types.FunctionType)


def problems(expectations: list[Expect]) -> list[str]:
    found = []
    for e in expectations:
        if e.owner is None:
            found.append(f"{e.label} not checked: nothing holding it was made")
        elif not hasattr(e.owner, e.attr):
            found.append(f"{e.label} is gone")
        elif not e.check(getattr(e.owner, e.attr)):
            value = getattr(e.owner, e.attr)
            found.append(f"{e.label} is now {type(value).__name__}, not {e.expected}")
    return found


def assert_unchanged(expectations: list[Expect]) -> None:
    found = problems(expectations)
    listed = "\n".join(found)
    assert not found, f"internals used by emotion.transport changed:\n{listed}\n{SEE}"


# Names on classes, modules and a bare h2 connection, checked without a server.
H2 = H2Connection()
CANCELLED = grpclib.utils.Wrapper()
CANCELLED.cancel(StreamTerminatedError("cancelled"))
STATIC = [
    Expect(
        "Server._protocol_factory", grpclib.server.Server, "_protocol_factory", FUNCTION, "a method"
    ),
    Expect("Server.__gc_step__", grpclib.server.Server, "__gc_step__", FUNCTION, "a method"),
    Expect("grpclib.server.Handler", grpclib.server, "Handler", of_type(type), "a class"),
    Expect("H2Protocol.connection_made", H2Protocol, "connection_made", FUNCTION, "a method"),
    Expect(
        "grpclib.protocol.H2Connection",
        grpclib.protocol,
        "H2Connection",
        lambda value: value is H2Connection,
        "h2's H2Connection",
    ),
    Expect("H2Connection._receive_frame", H2Connection, "_receive_frame", FUNCTION, "a method"),
    Expect(
        "H2Connection._receive_headers_frame",
        H2Connection,
        "_receive_headers_frame",
        FUNCTION,
        "a method",
    ),
    Expect(
        "H2Connection._receive_rst_stream_frame",
        H2Connection,
        "_receive_rst_stream_frame",
        FUNCTION,
        "a method",
    ),
    Expect("H2Connection.receive_data", H2Connection, "receive_data", FUNCTION, "a method"),
    Expect("H2Connection.streams", H2, "streams", of_type(dict), "a dict"),
    Expect("H2Connection.encoder", H2, "encoder", of_type(hpack.Encoder), "an hpack Encoder"),
    Expect(
        "H2Stream.closed",
        h2.stream.H2Stream,
        "closed",
        of_type(property),
        "a property",
    ),
    Expect("Handler.accept", grpclib.server.Handler, "accept", FUNCTION, "a method"),
    Expect(
        "H2Connection.incoming_buffer",
        H2,
        "incoming_buffer",
        of_type(FrameBuffer),
        "an h2 FrameBuffer",
    ),
    Expect(
        "FrameBuffer._update_header_buffer",
        FrameBuffer,
        "_update_header_buffer",
        FUNCTION,
        "a method",
    ),
    Expect(
        "FrameBuffer._headers_buffer",
        FrameBuffer(),
        "_headers_buffer",
        of_type(list),
        "a list of frames",
    ),
    Expect(
        "h2.connection._decode_headers", h2.connection, "_decode_headers", FUNCTION, "a function"
    ),
    Expect(
        "H2Connection._closed_streams",
        H2,
        "_closed_streams",
        lambda v: isinstance(v, dict),
        "a dict of stream id to StreamClosedBy",
    ),
    Expect(
        "h2.stream.StreamClosedBy",
        h2.stream,
        "StreamClosedBy",
        lambda v: hasattr(v, "SEND_RST_STREAM"),
        "an enum with SEND_RST_STREAM",
    ),
    Expect(
        "h2.connection.ConnectionInputs",
        h2.connection,
        "ConnectionInputs",
        lambda v: hasattr(v, "RECV_HEADERS"),
        "an enum with RECV_HEADERS",
    ),
    Expect("Connection.flush", grpclib.protocol.Connection, "flush", FUNCTION, "a method"),
    Expect("Handler.cancel", grpclib.server.Handler, "cancel", FUNCTION, "a method"),
    Expect(
        "Stream.__terminated__", grpclib.protocol.Stream, "__terminated__", FUNCTION, "a method"
    ),
    Expect(
        "h2.connection.ConnectionState", h2.connection, "ConnectionState", of_type(type), "a class"
    ),
    Expect(
        "H2Connection._frame_dispatch_table",
        H2,
        "_frame_dispatch_table",
        lambda v: isinstance(v, dict) and DataFrame in v,
        "a dict keyed by frame class",
    ),
    Expect(
        "H2Connection.highest_inbound_stream_id",
        H2,
        "highest_inbound_stream_id",
        of_type(int),
        "an int",
    ),
    Expect(
        "H2Connection.state_machine",
        H2,
        "state_machine",
        lambda v: isinstance(getattr(v, "state", None), ConnectionState),
        "a state machine whose state is a ConnectionState",
    ),
    Expect(
        "Wrapper._error",
        CANCELLED,
        "_error",
        of_type(StreamTerminatedError),
        "the error a cancelled wrapper raises",
    ),
    Expect("Frame._body_repr", Frame, "_body_repr", FUNCTION, "a method"),
    Expect("Channel._get_authority", Channel, "_get_authority", FUNCTION, "a method"),
    Expect(
        "Channel.__connect__", Channel, "__connect__", inspect.iscoroutinefunction, "a coroutine"
    ),
    Expect(
        "hyperframe.frame._raw_data_repr",
        hyperframe.frame,
        "_raw_data_repr",
        FUNCTION,
        "a function",
    ),
]


def test_module_and_class_internals_exist() -> None:
    assert_unchanged(STATIC)


def test_the_repeated_protocol_factory_is_grpclibs() -> None:
    installed = normalized_source(grpclib.server.Server._protocol_factory)

    diff = "\n".join(
        difflib.unified_diff(
            GRPCLIB_PROTOCOL_FACTORY.splitlines(),
            installed.splitlines(),
            "pinned (emotion.transport.server.GRPCLIB_PROTOCOL_FACTORY)",
            "installed grpclib",
            lineterm="",
        )
    )
    assert not diff, (
        "grpclib's Server._protocol_factory changed; GrpcServer._protocol_factory repeats it. "
        f"Bring the repetition up to date, then the pin:\n{diff}"
    )


def test_connection_made_still_builds_h2_from_the_module_global() -> None:
    code = H2Protocol.connection_made.__code__

    assert "H2Connection" in code.co_names, (
        "grpclib's H2Protocol.connection_made no longer reads the module-level name "
        f"H2Connection; emotion.transport.protocol rebinds that name for its code. {SEE}"
    )
    assert not code.co_freevars, (
        "grpclib's H2Protocol.connection_made now has a closure; emotion.transport.protocol "
        f"runs its code with other globals. {SEE}"
    )


class RecordingLogger(DummyLogger):
    """h2's logger interface, keeping the trace lines."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def trace(self, *args: Any, **kwargs: Any) -> None:
        self.lines.append(args[0] % args[1:])


def test_h2_formats_received_data_frames_through_the_quiet_repr() -> None:
    logger = RecordingLogger()
    server = H2ServerConnection(H2Configuration(client_side=False, logger=logger))
    client = H2Connection(H2Configuration(client_side=True))
    server.initiate_connection()
    client.initiate_connection()
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    stream_id = client.get_next_available_stream_id()
    headers = [(":method", "POST"), (":scheme", "http"), (":path", "/x"), (":authority", "a")]
    client.send_headers(stream_id, headers)
    client.send_data(stream_id, b"x" * 1000, end_stream=True)

    events = server.receive_data(client.data_to_send())

    assert [e.data for e in events if isinstance(e, DataReceived)] == [b"x" * 1000]
    assert any(line.startswith("Received frame: QuietDataFrame(") for line in logger.lines), (
        "h2 no longer formats received frames in H2Connection._receive_frame, or a DATA frame "
        f"reached it as another class: {logger.lines}. {SEE}"
    )
    assert QuietDataFrame in server._frame_dispatch_table


async def test_grpclibs_buffer_raises_assertion_error_when_a_call_ends_short() -> None:
    # receive_message turns this AssertionError into MalformedMessage.
    buffer = Buffer(lambda size: None)
    buffer.add(b"abc", 3)
    buffer.eof()

    with pytest.raises(AssertionError):
        await buffer.read(5)


@dataclass
class Echo:
    """A servable reading its request with receive_message, keeping what it saw."""

    streams: list[grpclib.server.Stream[HealthCheckRequest, HealthCheckResponse]] = field(
        default_factory=list
    )
    received: list[HealthCheckRequest | None] = field(default_factory=list)
    trailer: tuple[str, str] | None = None

    async def echo(
        self, stream: grpclib.server.Stream[HealthCheckRequest, HealthCheckResponse]
    ) -> None:
        self.streams.append(stream)
        if self.trailer is not None:
            add_trailer(stream, *self.trailer)
        request = await receive_message(stream, HealthCheckRequest, limit=1024)
        self.received.append(request)
        await stream.send_message(HealthCheckResponse(status=HealthCheckResponse.SERVING))

    def __mapping__(self) -> dict[str, MethodHandler]:
        return {
            ECHO_PATH: MethodHandler(
                self.echo, Cardinality.UNARY_UNARY, HealthCheckRequest, HealthCheckResponse
            )
        }


@dataclass
class Echoing:
    """A GrpcServer in this process serving Echo, a channel to it, and the Echo service."""

    server: GrpcServer
    channel: Channel
    echo: Echo

    last_call: grpclib.client.Stream[HealthCheckRequest, HealthCheckResponse] | None = None

    async def call(self, service: str = "x", timeout: float = 5) -> HealthCheckResponse | None:
        self.last_call = call = self.channel.request(
            ECHO_PATH,
            Cardinality.UNARY_UNARY,
            HealthCheckRequest,
            HealthCheckResponse,
            timeout=timeout,
        )
        async with call:
            await call.send_message(HealthCheckRequest(service=service), end=True)
            return await call.recv_message()


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[Echoing]:
    """A GrpcServer serving Echo on 127.0.0.1, and a grpclib channel to it."""
    echo = Echo()
    server = GrpcServer([echo])
    listener = socket.create_server(("127.0.0.1", 0))
    await server.start(sock=listener)
    channel = Channel("127.0.0.1", listener.getsockname()[1])
    yield Echoing(server, channel, echo)
    channel.close()
    server.close()
    server.close_connections()
    await server.wait_closed()


@pytest.fixture
async def served() -> AsyncIterator[Echoing]:
    async with serving() as served:
        yield served


def instance_expectations(served: Echoing) -> list[Expect]:
    server = served.server
    protocol = next(iter(server._protocols), None)
    connection = getattr(protocol, "connection", None)
    handler = getattr(protocol, "handler", None)
    h2_connection = getattr(connection, "_connection", None)
    stream = next(iter(served.echo.streams), None)
    call = served.last_call
    call_stream = getattr(call, "_stream", None)
    return [
        Expect("Channel._authority", served.channel, "_authority", of_type(str), "a str"),
        Expect("Server._mapping", server, "_mapping", of_type(dict), "a dict"),
        Expect("Server._codec", server, "_codec", of_type(CodecBase), "a CodecBase"),
        Expect("Server._status_details_codec", server, "_status_details_codec", lambda v: True, ""),
        Expect(
            "Server.__dispatch__",
            server,
            "__dispatch__",
            lambda v: inspect.iscoroutinefunction(getattr(v, "recv_message", None)),
            "a dispatcher with recv_message",
        ),
        Expect("Server._handlers", server, "_handlers", of_type(set), "a set"),
        Expect("Server._config", server, "_config", of_type(Configuration), "a Configuration"),
        Expect(
            "Server._h2_config",
            server,
            "_h2_config",
            of_type(H2Configuration),
            "an H2Configuration",
        ),
        Expect(
            "Server._server",
            server,
            "_server",
            of_type(asyncio.AbstractServer),
            "an asyncio server",
        ),
        Expect(
            "H2Protocol.connection",
            protocol,
            "connection",
            of_type(grpclib.protocol.Connection),
            "a grpclib.protocol.Connection",
        ),
        Expect(
            "Connection._connection",
            connection,
            "_connection",
            of_type(H2ServerConnection),
            "our H2ServerConnection (built through grpclib.protocol.H2Connection)",
        ),
        Expect("H2Protocol.handler", protocol, "handler", of_type(CallHandler), "our CallHandler"),
        Expect(
            "H2Protocol.processor",
            protocol,
            "processor",
            of_type(grpclib.protocol.EventsProcessor),
            "an EventsProcessor",
        ),
        Expect(
            "EventsProcessor.streams",
            getattr(protocol, "processor", None),
            "streams",
            of_type(dict),
            "a dict of stream id to stream",
        ),
        Expect("Handler._tasks", handler, "_tasks", of_type(dict), "a dict of stream to task"),
        Expect("Handler._cancelled", handler, "_cancelled", of_type(set), "a set of tasks"),
        Expect("Handler.closing", handler, "closing", of_type(bool), "a bool"),
        Expect(
            "Connection._transport",
            connection,
            "_transport",
            of_type(CoalescingTransport),
            "the CoalescingTransport it was given",
        ),
        Expect(
            "Connection.messages_received", connection, "messages_received", of_type(int), "an int"
        ),
        Expect(
            "Stream.wrapper",
            getattr(stream, "_stream", None),
            "wrapper",
            of_type(grpclib.utils.Wrapper),
            "the grpclib.utils.Wrapper of its call",
        ),
        Expect(
            "Connection.last_message_received",
            connection,
            "last_message_received",
            of_type(float),
            "a float",
        ),
        Expect(
            "H2Connection._frame_dispatch_table",
            h2_connection,
            "_frame_dispatch_table",
            lambda v: isinstance(v, dict) and DataFrame in v,
            "a dict keyed by frame class",
        ),
        Expect(
            "H2Connection.highest_inbound_stream_id",
            h2_connection,
            "highest_inbound_stream_id",
            of_type(int),
            "an int",
        ),
        Expect(
            "H2Connection.state_machine",
            h2_connection,
            "state_machine",
            lambda v: isinstance(getattr(v, "state", None), ConnectionState),
            "a state machine whose state is a ConnectionState",
        ),
        Expect(
            "Stream._stream",
            stream,
            "_stream",
            lambda v: inspect.iscoroutinefunction(getattr(v, "recv_data", None)),
            "a grpclib.protocol.Stream with recv_data",
        ),
        Expect("Stream._codec", stream, "_codec", of_type(CodecBase), "a CodecBase"),
        Expect(
            "Stream.window_updated",
            getattr(stream, "_stream", None),
            "window_updated",
            of_type(asyncio.Event),
            "an asyncio.Event",
        ),
        Expect(
            "Connection.write_ready",
            connection,
            "write_ready",
            of_type(asyncio.Event),
            "an asyncio.Event",
        ),
        Expect(
            "Stream._dispatch",
            stream,
            "_dispatch",
            lambda v: inspect.iscoroutinefunction(getattr(v, "recv_message", None)),
            "a dispatcher with recv_message",
        ),
        Expect("Stream._messages_received", stream, "_messages_received", of_type(int), "an int"),
        Expect(
            "grpclib.client.Stream._stream",
            call,
            "_stream",
            of_type(grpclib.protocol.Stream),
            "a grpclib.protocol.Stream",
        ),
        Expect(
            "grpclib.protocol.Stream._h2_connection",
            call_stream,
            "_h2_connection",
            of_type(H2Connection),
            "an h2 H2Connection",
        ),
        Expect(
            "grpclib.protocol.Stream._transport",
            call_stream,
            "_transport",
            lambda v: callable(getattr(v, "is_closing", None)),
            "a transport",
        ),
        Expect(
            "grpclib.protocol.Stream.headers",
            call_stream,
            "headers",
            of_type(list),
            "a list of the header fields received",
        ),
        Expect(
            "grpclib.protocol.Stream.trailers",
            call_stream,
            "trailers",
            of_type(list),
            "a list of the trailer fields received",
        ),
        Expect(
            "grpclib.protocol.Stream.send_headers",
            getattr(stream, "_stream", None),
            "send_headers",
            inspect.iscoroutinefunction,
            "a coroutine method",
        ),
    ]


async def test_instance_internals_exist_on_a_real_server_and_client(served: Echoing) -> None:
    # A moved internal may break the call itself: check what was made, then report both.
    try:
        await served.call(timeout=2)
    except Exception as exc:  # reported below, after the names
        failed: Exception | None = exc
    else:
        failed = None

    assert_unchanged(instance_expectations(served))
    assert failed is None, f"the call failed: {failed!r}"


def named_in(doc: str, label: str) -> bool:
    """In double backticks, with or without its module: ``grpclib.server.Stream._stream``."""
    return re.search(rf"``([\w.]+\.)?{re.escape(label)}``", doc) is not None


async def test_every_internal_checked_is_listed_in_the_package_docstring(
    served: Echoing,
) -> None:
    await served.call()
    doc = emotion.transport.__doc__ or ""
    labels = {e.label for e in STATIC + instance_expectations(served)}

    unlisted = [label for label in labels if not named_in(doc, label)]

    assert sorted(unlisted) == []


async def test_receive_message_dispatches_recv_message_and_keeps_the_statistics(
    served: Echoing,
) -> None:
    async def replace(event: RecvMessage) -> None:
        event.message = HealthCheckRequest(service=f"seen {event.message.service}")

    listen(served.server, RecvMessage, replace)

    await served.call("x")

    [stream] = served.echo.streams
    assert served.echo.received == [HealthCheckRequest(service="seen x")]
    assert stream._messages_received == 1
    assert stream._stream.connection.messages_received == 1
    assert stream._stream.connection.last_message_received is not None


async def test_a_client_sees_the_goaway_of_close_connections(served: Echoing) -> None:
    await served.call()
    call = served.last_call
    assert call is not None
    before = turned_away(call)

    served.server.close_connections()
    for _ in range(100):
        if turned_away(call):
            break
        await asyncio.sleep(0.02)

    assert (before, turned_away(call)) == (False, True)


async def test_a_trailer_grpclib_refuses_reaches_the_client(served: Echoing) -> None:
    served.echo.trailer = ("grpc-retry-pushback-ms", "250")

    await served.call()

    assert served.last_call is not None
    assert served.last_call.trailing_metadata == {}  # grpclib's metadata drops it
    assert received_trailer(served.last_call, "grpc-retry-pushback-ms") == "250"


def snapshot() -> dict[str, int]:
    """The id of each module-level name and class attribute of loaded grpclib, h2, hyperframe."""
    state = {}
    for name, module in list(sys.modules.items()):
        if module is None or name.split(".")[0] not in {"grpclib", "h2", "hyperframe", "hpack"}:
            continue
        for key, value in list(vars(module).items()):
            state[f"{name}.{key}"] = id(value)
            if isinstance(value, type) and value.__module__ == name:
                for attr, member in list(vars(value).items()):
                    state[f"{name}.{key}.{attr}"] = id(member)
    return state


def changed_since(before: dict[str, int]) -> list[str]:
    after = snapshot()
    return sorted(key for key, value in before.items() if after.get(key) != value)


IMPORT_CHECK = """
import importlib, json, pkgutil, sys
import grpclib, h2, hpack, hyperframe
for package in (grpclib, h2, hpack, hyperframe):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        try:
            importlib.import_module(module.name)
        except ImportError:
            pass
{snapshot}
before = snapshot()
import emotion, emotion.client.client
after = snapshot()
print(json.dumps({{
    "checked": len(before),
    "watched": [k for k in ("hyperframe.frame._raw_data_repr", "grpclib.protocol.H2Connection")
                if k in before],
    "changed": sorted(k for k, v in before.items() if after.get(k) != v),
}}))
"""


@pytest.mark.subprocess
def test_importing_emotion_changes_nothing_in_grpclib_h2_or_hyperframe() -> None:
    script = IMPORT_CHECK.format(snapshot=inspect.getsource(snapshot))
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
        check=True,
    )
    report = json.loads(result.stdout)

    assert report["watched"] == ["hyperframe.frame._raw_data_repr", "grpclib.protocol.H2Connection"]
    assert report["checked"] > 1000
    assert report["changed"] == [], "importing emotion changed these"


async def test_serving_changes_nothing_in_grpclib_h2_or_hyperframe() -> None:
    before = snapshot()

    async with serving() as served:
        await served.call()

    assert changed_since(before) == []
