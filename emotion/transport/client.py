"""The client's side of grpclib: a channel and a unary call that cost the caller less CPU.

And what grpclib's client channel knows but does not say (whether a call
was sent away, a trailer its metadata drops), for the retries.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from asyncio import BaseTransport, Transport
from typing import Any, TypeVar, cast

from grpclib.client import Channel, Handler, Stream
from grpclib.config import Configuration
from grpclib.const import Cardinality
from grpclib.encoding.base import GRPC_CONTENT_TYPE, CodecBase
from grpclib.exceptions import StreamTerminatedError
from grpclib.metadata import USER_AGENT, Deadline, decode_metadata, encode_metadata, encode_timeout
from grpclib.protocol import H2Protocol
from grpclib.protocol import Stream as H2Stream
from grpclib.stream import recv_message
from grpclib.utils import Wrapper
from h2.connection import ConnectionState
from hpack import NeverIndexedHeaderTuple
from multidict import MultiDict

from emotion.codec import ProtobufCodec
from emotion.transport.building import with_our_connection
from emotion.transport.client_connection import H2ClientConnection
from emotion.transport.writes import CoalescingTransport

SendType = TypeVar("SendType")
ReplyType = TypeVar("ReplyType")

_DEADLINE_EXCEEDED = "Deadline exceeded"  # grpclib's words, for the same TimeoutError


class ClientChannel(Channel):
    """grpclib's Channel whose connections send what one loop pass wrote as one send.

    grpclib writes a call's headers and its message separately, and each
    WINDOW_UPDATE as it goes: two or three system calls per call, which on
    one connection with calls in flight cost the caller more than h2 does.
    """

    def _protocol_factory(self) -> H2Protocol:
        return ClientProtocol(Handler(), self._config, self._h2_config)


class ClientProtocol(H2Protocol):
    """grpclib's client protocol: our h2 connection, over a CoalescingTransport."""

    def connection_made(self, transport: BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        _CONNECTION_MADE(self, CoalescingTransport(cast(Transport, transport), loop))


_CONNECTION_MADE = with_our_connection(H2Protocol.connection_made, H2ClientConnection)


class UnaryCall(Stream[SendType, ReplyType]):
    """One unary call, its steps run as one: what grpclib's Stream does, for less CPU.

    grpclib's Stream serves every kind of call a step at a time (headers,
    message, initial metadata, message, trailers), each step entering the
    call's wrapper and checking the steps before it; its deadline is a
    generator-based context manager, and its headers are built and encoded
    anew for each call. Here the call enters its wrapper once, arms its
    deadline with one timer, sends headers made once per method (as bytes,
    which h2 takes as they are) with ``grpc-timeout``, different on every
    call, last and out of HPACK's table (where it would push out the headers
    that never change, which our h2 connection sends again as they were
    encoded), and sends its message copied once (``ProtobufCodec.framed``).

    What a caller sees is grpclib's: the same errors (GRPCError from the
    status, TimeoutError at the deadline, StreamTerminatedError for a lost
    connection or a reset), grpclib's events dispatched to the channel's
    listeners, and the same state, so that what reads a failed call
    (:func:`turned_away`, :func:`received_trailer`) reads this one.
    """

    def __init__(
        self,
        channel: Channel,
        path: str,
        request_type: type[SendType],
        reply_type: type[ReplyType],
        *,
        deadline: Deadline | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            channel,
            path,
            cast(Any, MultiDict(metadata or ())),
            Cardinality.UNARY_UNARY,
            request_type,
            reply_type,
            codec=channel._codec,
            status_details_codec=channel._status_details_codec,
            dispatch=channel.__dispatch__,
            deadline=deadline,
        )

    async def unary(self, message: SendType) -> ReplyType | None:
        """Send ``message``; the answer, or None if the server sent none and status OK."""
        self._wrapper = wrapper = Wrapper()
        timer = None
        if self._deadline is not None:
            timeout = self._deadline.time_remaining()
            if not timeout:
                raise TimeoutError(_DEADLINE_EXCEEDED)
            timer = asyncio.get_running_loop().call_later(
                timeout, wrapper.cancel, TimeoutError(_DEADLINE_EXCEEDED)
            )
        try:
            with wrapper:
                await self._send(message)
                return await self._receive()
        except StreamTerminatedError:
            if self._send_request_done:
                self._maybe_raise()  # a status the server sent says more than the reset
            raise
        finally:
            if self._send_request_done:
                if self._stream.closable:
                    self._stream.reset_nowait()
                self._release_stream()
            if timer is not None:
                timer.cancel()

    async def _send(self, message: SendType) -> None:
        channel = self._channel
        protocol = await channel.__connect__()
        stream = protocol.processor.connection.create_stream(wrapper=self._wrapper)
        content_type = _content_type(self._codec.__content_subtype__)
        # h2 takes bytes as they are; grpclib types its headers as str.
        headers: list[Any] = list(
            _headers_before(channel._scheme, self._method_name, channel._authority)
        )
        headers.extend(_headers_after(content_type))
        if self._deadline is not None:  # last of ours: those before it are the same every call
            timeout = encode_timeout(self._deadline.time_remaining())
            headers.append(NeverIndexedHeaderTuple(b"grpc-timeout", timeout.encode("ascii")))
        (metadata,) = await self._dispatch.send_request(
            self._metadata,
            method_name=self._method_name,
            deadline=self._deadline,
            content_type=content_type,
        )
        if metadata:
            headers.extend(encode_metadata(metadata))
        self._release_stream = await stream.send_request(
            headers, end_stream=False, _processor=protocol.processor
        )
        self._stream = stream
        self._send_request_done = True
        self.peer = stream.connection.get_peer()

        (message,) = await self._dispatch.send_message(message)
        if isinstance(self._codec, ProtobufCodec):  # an image is copied once, not thrice
            data = self._codec.framed(message, self._send_type)
        else:
            data = self._codec.encode(message, self._send_type)
            data = b"\0" + len(data).to_bytes(4, "big") + data
        await _send_data(stream, data)
        self._send_message_done = self._end_done = True
        self._messages_sent += 1
        stream.connection.messages_sent += 1

    async def _receive(self) -> ReplyType | None:
        stream = self._stream
        dispatch = self._dispatch
        headers = await stream.recv_headers()
        self._recv_initial_metadata_done = True
        fields = dict(headers)
        self._raise_for_status(fields)
        self._raise_for_content_type(fields)
        if "grpc-status" in fields:  # a trailers-only answer: no message
            self._trailers_only = True
            (self.initial_metadata,) = await dispatch.recv_initial_metadata(MultiDict())
            await self._trailers(headers, fields)
            return None
        (self.initial_metadata,) = await dispatch.recv_initial_metadata(decode_metadata(headers))
        reply = await recv_message(stream, self._codec, self._recv_type)
        if reply is not None:
            (reply,) = await dispatch.recv_message(reply)
            self._messages_received += 1
            stream.connection.messages_received += 1
        # As grpclib's: once the connection closes, the answer stands without its trailers.
        if not stream._transport.is_closing():
            trailers = await stream.recv_trailers()
            await self._trailers(trailers, dict(trailers))
        return reply

    async def _trailers(self, trailers: list[tuple[str, str]], fields: dict[str, str]) -> None:
        self._recv_trailing_metadata_done = True
        status, message, details = self._process_grpc_status(fields)
        (self.trailing_metadata,) = await self._dispatch.recv_trailing_metadata(
            decode_metadata(trailers),
            status=status,
            status_message=message,
            status_details=details,
        )
        self._raise_for_grpc_status(status, message, details)


async def _send_data(stream: H2Stream, data: bytes) -> None:
    """``data`` as DATA frames ending the stream, as the window and frame size allow.

    grpclib's ``send_data`` copies the message through a BytesIO; this hands
    h2 the message itself when it fits in one frame, and our h2 connection
    hands it to the transport as it is.
    """
    h2 = stream._h2_connection
    connection = stream.connection
    stream_id = stream.id
    assert stream_id is not None
    sent, size = 0, len(data)
    while True:
        await connection.write_ready.wait()
        window = h2.local_flow_control_window(stream_id)
        if window <= 0:  # it may go negative
            stream.window_updated.clear()
            await stream.window_updated.wait()
            continue
        length = min(window, h2.max_outbound_frame_size, size - sent)
        chunk = data if length == size else data[sent : sent + length]
        sent += length
        h2.send_data(stream_id, chunk, end_stream=sent == size)
        if isinstance(h2, H2ClientConnection):
            for piece in h2.chunks_to_send():
                stream._transport.write(piece)
        else:
            stream._transport.write(h2.data_to_send())
        stream.data_sent += length
        connection.data_sent += length
        connection.data_send_process()
        if sent == size:
            return


@functools.cache
def _content_type(subtype: str) -> str:
    return GRPC_CONTENT_TYPE if subtype == "proto" else f"{GRPC_CONTENT_TYPE}+{subtype}"


@functools.cache
def _headers_before(scheme: str, path: str, authority: str) -> tuple[tuple[bytes, bytes], ...]:
    return (
        (b":method", b"POST"),
        (b":scheme", scheme.encode("ascii")),
        (b":path", path.encode("ascii")),
        (b":authority", authority.encode("ascii")),
    )


@functools.cache
def _headers_after(content_type: str) -> tuple[tuple[bytes, bytes], ...]:
    return (
        (b"te", b"trailers"),
        (b"content-type", content_type.encode("ascii")),
        (b"user-agent", USER_AGENT.encode("ascii")),
    )


def channel_to(
    address: str, port: int, *, name: str, ssl: ssl.SSLContext | None, codec: CodecBase
) -> Channel:
    """A channel that connects to ``address`` but speaks to the server as ``name``.

    One of the addresses a name resolves to: the call's ``:authority`` and the
    TLS server name stay the name the caller gave, as a proxy routing by
    authority and a certificate issued for the name expect.
    """
    named = ssl is not None and name != address
    config = Configuration(ssl_target_name_override=name) if named else None
    channel = ClientChannel(address, port, ssl=ssl, codec=codec, config=config)
    channel._authority = channel._get_authority(name, port)
    return channel


async def connect(channel: Channel) -> None:
    """Open the channel's connection now, if it has none, rather than at its next call."""
    await channel.__connect__()


def turned_away(call: Stream[Any, Any]) -> bool:
    """Whether the server sent a failed ``call`` away rather than failing under it.

    A GOAWAY closed the call's own connection (grpclib ends every call on
    one, those the server would have finished included), or the server reset
    the call before its response headers while the connection stayed up
    (REFUSED_STREAM): either way the server had nothing wrong with it, and a
    new try may follow at once. A connection lost under the call (a server
    that died) is not this. False for a call that never sent its headers.
    """
    stream = getattr(call, "_stream", None)  # set once the call's headers went out
    if stream is None:
        return False
    if stream._h2_connection.state_machine.state is ConnectionState.CLOSED:
        return True
    return stream.headers is None and not stream._transport.is_closing()


def received_trailer(call: Stream[Any, Any], name: str) -> str | None:
    """The value of the trailer ``name`` a call received, whatever grpclib kept of it.

    An error without an answer comes as trailers alone, in the response's
    headers (a "trailers-only" response).
    """
    h2_stream = getattr(call, "_stream", None)  # set once the call's headers went out
    if h2_stream is None:
        return None
    for fields in (h2_stream.trailers, h2_stream.headers):
        for key, value in fields or ():
            if key == name:
                return str(value)
    return None
