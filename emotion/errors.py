"""What a failed call's status means to its caller: shared by the client and the server."""

from __future__ import annotations

from grpclib.const import Status

#: Statuses that concern one request, not the server or the connection: a
#: client reports them and goes on with its next request.
ABOUT_THE_REQUEST = frozenset({Status.INVALID_ARGUMENT, Status.RESOURCE_EXHAUSTED})

#: The trailer (gRFC A6) by which a server says how many milliseconds a client
#: should wait before retrying a call, or with a negative number, not to retry.
PUSHBACK = "grpc-retry-pushback-ms"
