"""The grpclib, h2 and hpack internals the client's side of emotion.transport relies on.

As tests/transport/test_boundary.py does for the server: each name is
checked against the installed versions, on the classes and on what a real
call made (a ClientChannel and a UnaryCall to a grpclib server), and each
must be listed in emotion/transport/__init__.py.
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

import grpclib.client
import grpclib.metadata
import grpclib.protocol
import grpclib.server
import grpclib.stream
import grpclib.utils
import h2.connection
import hpack
import pytest
from grpclib.config import Configuration
from grpclib.const import Cardinality
from grpclib.const import Handler as MethodHandler
from grpclib.encoding.base import CodecBase
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.server import Stream
from h2.config import H2Configuration
from h2.frame_buffer import FrameBuffer
from test_boundary import (
    FUNCTION,
    Expect,
    assert_unchanged,
    changed_since,
    named_in,
    of_type,
    snapshot,
)

import emotion.transport
from emotion.transport.client import ClientChannel, UnaryCall
from emotion.transport.client_connection import AnswerFrameBuffer, H2ClientConnection
from emotion.transport.header_blocks import RepeatingDecoder, RepeatingEncoder
from emotion.transport.writes import CoalescingTransport

PATH = "/test.Echo/Echo"
COROUTINE = inspect.iscoroutinefunction
CALL = grpclib.client.Stream
H2_STREAM = grpclib.protocol.Stream
CONNECTION = grpclib.protocol.Connection


def parameters(value: object) -> list[str]:
    return list(inspect.signature(cast(Any, value)).parameters)


def takes(*names: str) -> Callable[[object], bool]:
    """A check that a callable takes these parameters, in this order, after ``self``."""
    return lambda value: parameters(value)[1:] == list(names)


def method(owner: object, name: str, label: str) -> Expect:
    return Expect(label, owner, name, FUNCTION, "a method")


def state(name: str, check: Callable[[object], bool], expected: str) -> Expect:
    return Expect(f"grpclib.client.Stream.{name}", CALL, name, check, expected)


CLIENT_STATIC = [
    method(grpclib.client.Channel, "_protocol_factory", "Channel._protocol_factory"),
    Expect("Channel.__connect__", grpclib.client.Channel, "__connect__", COROUTINE, "a coroutine"),
    Expect("grpclib.client.Handler", grpclib.client, "Handler", of_type(type), "a class"),
    Expect(
        "grpclib.client.Stream.__init__",
        CALL,
        "__init__",
        takes(
            "channel",
            "method_name",
            "metadata",
            "cardinality",
            "send_type",
            "recv_type",
            "codec",
            "status_details_codec",
            "dispatch",
            "deadline",
        ),
        "grpclib's Stream(channel, method_name, metadata, cardinality, ..., deadline)",
    ),
    *(
        method(CALL, name, f"grpclib.client.Stream.{name}")
        for name in (
            "_maybe_raise",
            "_raise_for_status",
            "_raise_for_content_type",
            "_process_grpc_status",
            "_raise_for_grpc_status",
        )
    ),
    *(
        state(name, of_type(bool), "a bool")
        for name in (
            "_send_request_done",
            "_send_message_done",
            "_end_done",
            "_recv_initial_metadata_done",
            "_recv_trailing_metadata_done",
        )
    ),
    state("_trailers_only", lambda value: value is None, "None until the answer says"),
    state("_messages_sent", of_type(int), "an int"),
    state("_messages_received", of_type(int), "an int"),
    Expect(
        "grpclib.protocol.Stream.send_request",
        H2_STREAM,
        "send_request",
        lambda value: COROUTINE(value) and "_processor" in parameters(value),
        "a coroutine method taking _processor",
    ),
    Expect(
        "grpclib.protocol.Stream.recv_headers", H2_STREAM, "recv_headers", COROUTINE, "a coroutine"
    ),
    Expect(
        "grpclib.protocol.Stream.recv_trailers",
        H2_STREAM,
        "recv_trailers",
        COROUTINE,
        "a coroutine",
    ),
    method(H2_STREAM, "reset_nowait", "grpclib.protocol.Stream.reset_nowait"),
    Expect(
        "grpclib.protocol.Stream.closable", H2_STREAM, "closable", of_type(property), "a property"
    ),
    Expect(
        "Connection.create_stream",
        CONNECTION,
        "create_stream",
        lambda value: "wrapper" in parameters(value),
        "a method taking wrapper",
    ),
    method(CONNECTION, "get_peer", "Connection.get_peer"),
    method(CONNECTION, "data_send_process", "Connection.data_send_process"),
    Expect("Connection.messages_sent", CONNECTION, "messages_sent", of_type(int), "an int"),
    Expect("Connection.data_sent", CONNECTION, "data_sent", of_type(int), "an int"),
    Expect("grpclib.protocol.Stream.data_sent", H2_STREAM, "data_sent", of_type(int), "an int"),
    Expect(
        "grpclib.stream.recv_message",
        grpclib.stream,
        "recv_message",
        lambda value: COROUTINE(value) and parameters(value) == ["stream", "codec", "message_type"],
        "a coroutine function (stream, codec, message_type)",
    ),
    Expect(
        "grpclib.utils.Wrapper",
        grpclib.utils,
        "Wrapper",
        lambda value: isinstance(value, type) and callable(getattr(value, "cancel", None)),
        "a class with cancel()",
    ),
    *(
        Expect(f"grpclib.metadata.{name}", grpclib.metadata, name, FUNCTION, "a function")
        for name in ("encode_timeout", "encode_metadata", "decode_metadata")
    ),
    Expect("grpclib.metadata.USER_AGENT", grpclib.metadata, "USER_AGENT", of_type(str), "a str"),
    method(h2.connection.H2Connection, "_prepare_for_sending", "H2Connection._prepare_for_sending"),
    Expect(
        "H2Connection._data_to_send",
        h2.connection.H2Connection(),
        "_data_to_send",
        of_type(bytearray),
        "a bytearray",
    ),
    Expect(
        "H2Connection.encoder",
        h2.connection.H2Connection(),
        "encoder",
        of_type(hpack.Encoder),
        "an hpack Encoder",
    ),
    Expect(
        "H2Connection.incoming_buffer",
        h2.connection.H2Connection(),
        "incoming_buffer",
        of_type(FrameBuffer),
        "an h2 FrameBuffer",
    ),
    Expect(
        "FrameBuffer._headers_buffer", FrameBuffer(), "_headers_buffer", of_type(list), "a list"
    ),
    method(FrameBuffer, "__next__", "FrameBuffer.__next__"),
    method(FrameBuffer, "add_data", "FrameBuffer.add_data"),
    method(FrameBuffer, "_validate_frame_length", "FrameBuffer._validate_frame_length"),
    Expect(
        "H2Connection.decoder",
        h2.connection.H2Connection(),
        "decoder",
        of_type(hpack.Decoder),
        "an hpack Decoder",
    ),
    Expect(
        "Decoder.max_header_list_size",
        hpack.Decoder(),
        "max_header_list_size",
        of_type(int),
        "an int",
    ),
    method(hpack.Decoder, "_assert_valid_table_size", "Decoder._assert_valid_table_size"),
    Expect(
        "Encoder.header_table_size",
        hpack.Encoder,
        "header_table_size",
        lambda value: isinstance(value, property) and value.fset is not None,
        "a property with a setter",
    ),
]


def test_the_client_s_module_and_class_internals_exist() -> None:
    assert_unchanged(CLIENT_STATIC)


class Echo:
    async def echo(self, stream: Stream[HealthCheckRequest, HealthCheckResponse]) -> None:
        await stream.recv_message()
        await stream.send_message(HealthCheckResponse(status=HealthCheckResponse.SERVING))

    def __mapping__(self) -> dict[str, MethodHandler]:
        unary = Cardinality.UNARY_UNARY
        return {PATH: MethodHandler(self.echo, unary, HealthCheckRequest, HealthCheckResponse)}


@dataclass
class Called:
    channel: ClientChannel
    call: UnaryCall[HealthCheckRequest, HealthCheckResponse]
    failed: Exception | None


@pytest.fixture
async def called() -> AsyncIterator[Called]:
    """A UnaryCall made on a ClientChannel to a grpclib server in this process."""
    server = grpclib.server.Server([Echo()])
    listener = socket.create_server(("127.0.0.1", 0))
    await server.start(sock=listener)
    channel = ClientChannel("127.0.0.1", listener.getsockname()[1])
    call = UnaryCall(channel, PATH, HealthCheckRequest, HealthCheckResponse)
    # A moved internal may break the call itself: check what was made, then report both.
    try:
        await call.unary(HealthCheckRequest())
    except Exception as exc:  # reported by the test, after the names
        failed: Exception | None = exc
    else:
        failed = None
    yield Called(channel, call, failed)
    channel.close()
    server.close()
    await server.wait_closed()


def client_expectations(called: Called) -> list[Expect]:
    channel, call = called.channel, called.call
    protocol = getattr(channel, "_protocol", None)
    processor = getattr(protocol, "processor", None)
    connection = getattr(processor, "connection", None)
    return [
        Expect("Channel._config", channel, "_config", of_type(Configuration), "a Configuration"),
        Expect("Channel._h2_config", channel, "_h2_config", of_type(H2Configuration), "a config"),
        Expect("Channel._codec", channel, "_codec", of_type(CodecBase), "a CodecBase"),
        Expect(
            "Channel._status_details_codec", channel, "_status_details_codec", lambda v: True, ""
        ),
        Expect(
            "Channel.__dispatch__",
            channel,
            "__dispatch__",
            lambda value: COROUTINE(getattr(value, "send_request", None)),
            "a dispatcher with send_request",
        ),
        Expect("Channel._scheme", channel, "_scheme", of_type(str), "a str"),
        Expect("Channel._authority", channel, "_authority", of_type(str), "a str"),
        Expect(
            "EventsProcessor.connection",
            processor,
            "connection",
            of_type(CONNECTION),
            "a grpclib.protocol.Connection",
        ),
        Expect(
            "Connection._connection",
            connection,
            "_connection",
            of_type(H2ClientConnection),
            "our H2ClientConnection (built through grpclib.protocol.H2Connection)",
        ),
        Expect(
            "Connection._transport",
            connection,
            "_transport",
            of_type(CoalescingTransport),
            "the CoalescingTransport it was given",
        ),
        Expect(
            "H2Connection.encoder",
            getattr(connection, "_connection", None),
            "encoder",
            of_type(RepeatingEncoder),
            "our RepeatingEncoder",
        ),
        Expect(
            "H2Connection.incoming_buffer",
            getattr(connection, "_connection", None),
            "incoming_buffer",
            of_type(AnswerFrameBuffer),
            "our AnswerFrameBuffer",
        ),
        Expect(
            "H2Connection.decoder",
            getattr(connection, "_connection", None),
            "decoder",
            of_type(RepeatingDecoder),
            "our RepeatingDecoder",
        ),
        Expect(
            "grpclib.client.Stream._stream",
            call,
            "_stream",
            of_type(H2_STREAM),
            "a grpclib.protocol.Stream",
        ),
        Expect(
            "grpclib.protocol.Stream.id",
            getattr(call, "_stream", None),
            "id",
            of_type(int),
            "an int",
        ),
        Expect(
            "grpclib.client.Stream.trailing_metadata",
            call,
            "trailing_metadata",
            lambda value: value is not None,
            "set from the trailers",
        ),
        Expect(
            "grpclib.client.Stream.peer", call, "peer", of_type(grpclib.protocol.Peer), "a Peer"
        ),
    ]


async def test_the_client_s_instance_internals_exist_on_a_real_call(called: Called) -> None:
    assert_unchanged(client_expectations(called))
    assert called.failed is None, f"the call failed: {called.failed!r}"


async def test_every_client_internal_checked_is_listed_in_the_package_docstring(
    called: Called,
) -> None:
    doc = emotion.transport.__doc__ or ""
    labels = {e.label for e in CLIENT_STATIC + client_expectations(called)}

    unlisted = [label for label in labels if not named_in(doc, label)]

    assert sorted(unlisted) == []


async def test_calling_changes_nothing_in_grpclib_h2_hyperframe_or_hpack() -> None:
    before = snapshot()
    server = grpclib.server.Server([Echo()])
    listener = socket.create_server(("127.0.0.1", 0))
    await server.start(sock=listener)
    channel = ClientChannel("127.0.0.1", listener.getsockname()[1])
    try:
        call = UnaryCall(channel, PATH, HealthCheckRequest, HealthCheckResponse)
        await call.unary(HealthCheckRequest())
    finally:
        channel.close()
        server.close()
        await server.wait_closed()

    assert changed_since(before) == []
