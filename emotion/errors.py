"""What a failed call's status means to its caller: shared by the client and the server."""

from __future__ import annotations

from grpclib.const import Status

#: Statuses that concern one request, not the server or the connection: a
#: client reports them and goes on with its next request.
ABOUT_THE_REQUEST = frozenset({Status.INVALID_ARGUMENT, Status.RESOURCE_EXHAUSTED})
