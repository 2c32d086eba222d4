"""What grpclib's client channel knows but does not say."""

from __future__ import annotations

from typing import Any

from grpclib.client import Stream
from h2.connection import ConnectionState


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
