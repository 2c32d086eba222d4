"""Trailers that grpclib's metadata API refuses: the ``grpc-`` ones gRPC defines beyond status.

grpclib rejects metadata keys starting with ``grpc-`` when it sends them (and
drops them when it receives them: emotion.transport.client reads them);
gRFC A6's ``grpc-retry-pushback-ms`` is one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpclib.server

_Headers = list[tuple[str, str]]


def add_trailer(stream: grpclib.server.Stream[Any, Any], name: str, value: str) -> None:
    """Make the call's trailers, when grpclib sends them, also carry ``name: value``.

    grpclib builds the trailers in ``send_trailing_metadata`` and sends them
    with its h2 stream's ``send_headers(..., end_stream=True)``: this call's
    h2 stream, and no other, appends the field to them.
    """
    h2_stream = stream._stream
    send: Callable[..., Awaitable[None]] = h2_stream.send_headers

    async def send_headers(headers: _Headers, end_stream: bool = False) -> None:
        if end_stream:
            headers = [*headers, (name, value)]
        await send(headers, end_stream=end_stream)

    h2_stream.send_headers = send_headers  # type: ignore[method-assign]
