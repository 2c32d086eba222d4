"""Every reason a call fails, and the gRPC status a client gets for it: one table.

The modules that find a problem raise their own exception, with a message
written for the client; this table alone decides the status.
"""

from __future__ import annotations

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from emotion.codec import InvalidMessage
from emotion.decode import InvalidImage
from emotion.inference.process_connection import ProcessExited
from emotion.inference.threads import Aborted, DeadlinePassed, QueueFull
from emotion.model import InvalidOptions, ModelFailure
from emotion.security import Unauthenticated
from emotion.serving.admission import Busy, NotServing
from emotion.transport.messages import (
    CompressedMessage,
    MalformedMessage,
    MessageTooLarge,
    ReceivingFull,
    SlowMessage,
)

_REQUEST = "request is not a valid emotion.v1.Request: {}"

#: Exception, status, and how its message reads to the client.
STATUSES: tuple[tuple[type[Exception], Status, str], ...] = (
    (Unauthenticated, Status.UNAUTHENTICATED, "{}"),
    (NotServing, Status.UNAVAILABLE, "{}"),
    (Busy, Status.RESOURCE_EXHAUSTED, "{}"),
    (MessageTooLarge, Status.RESOURCE_EXHAUSTED, "{}"),
    (ReceivingFull, Status.RESOURCE_EXHAUSTED, "{}"),
    (SlowMessage, Status.DEADLINE_EXCEEDED, "{}"),
    (CompressedMessage, Status.UNIMPLEMENTED, "{}"),
    (MalformedMessage, Status.INVALID_ARGUMENT, _REQUEST),
    (InvalidMessage, Status.INVALID_ARGUMENT, "request is {}"),
    (InvalidImage, Status.INVALID_ARGUMENT, "{}"),
    (InvalidOptions, Status.INVALID_ARGUMENT, "{}"),
    (QueueFull, Status.RESOURCE_EXHAUSTED, "{}"),
    (DeadlinePassed, Status.DEADLINE_EXCEEDED, "{}"),
    (Aborted, Status.UNAVAILABLE, "{}"),
    (ProcessExited, Status.UNAVAILABLE, "{}"),
    (ModelFailure, Status.INTERNAL, "{}"),
)


#: Refusals of a server that is full for now: worth a retry once calls have left.
_FULL = (Busy, QueueFull, ReceivingFull)
#: Bounds of the pushback for a full server, in milliseconds.
PUSHBACK_RANGE = (10, 2000)


def pushback_ms(exc: Exception, turnover: float, spread: float) -> str | None:
    """The grpc-retry-pushback-ms trailer (gRFC A6) that goes with refusing a call for ``exc``.

    A full server asks the client to come back once its queue has turned
    over: ``turnover`` seconds, the time a call takes from admission to
    answer, which grows with the queue. ``spread`` (0 to 1, random per call)
    scatters the returning clients over half to one and a half times that, so
    that they do not all come back at once. A message too large asks for no
    retry: a negative value. Other refusals leave it to the client's backoff.
    """
    if isinstance(exc, _FULL):
        low, high = PUSHBACK_RANGE
        return str(min(high, max(low, round(turnover * (0.5 + spread) * 1000))))
    if isinstance(exc, MessageTooLarge):
        return "-1"
    return None


def to_grpc_error(exc: Exception) -> GRPCError | None:
    """The status and message a client gets for ``exc``; None for an unforeseen error."""
    if isinstance(exc, GRPCError):
        return exc
    for kind, status, message in STATUSES:
        if isinstance(exc, kind):
            return GRPCError(status, message.format(exc))
    return None
