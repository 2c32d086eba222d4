"""What grpclib's client channel knows but does not say."""

from __future__ import annotations

import ssl
from typing import Any

from grpclib.client import Channel, Stream
from grpclib.config import Configuration
from grpclib.encoding.base import CodecBase
from h2.connection import ConnectionState


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
    channel = Channel(address, port, ssl=ssl, codec=codec, config=config)
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
