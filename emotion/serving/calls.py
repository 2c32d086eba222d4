"""What every Pipeline call gets around its answer: a request id, its status, one log line, metrics.

And its span when tracing is on, and the count of calls in progress that a drain waits on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from emotion.errors import PUSHBACK
from emotion.observability.metrics import NoMetrics, Recorder
from emotion.observability.tracing import NoTracing, Tracer
from emotion.serving.sockets import format_address
from emotion.serving.statuses import pushback_ms, to_grpc_error
from emotion.transport.trailers import add_trailer

log = logging.getLogger(__name__)

Answer = Callable[[Stream[Any, Any]], Awaitable[None]]

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/-]+")
# How much each answered unary call moves the estimate of a call's duration.
_TURNOVER_WEIGHT = 0.05


class Calls:
    """Runs each call's answer and finishes the call, whatever the answer did."""

    def __init__(self, metrics: Recorder | None = None, tracing: Tracer | None = None) -> None:
        self._metrics = metrics or NoMetrics()
        self._tracing = tracing or NoTracing()
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        #: Seconds an answered unary call takes, headers to trailers (a moving
        #: average): how long a full queue takes to turn over, for pushback.
        self.turnover = 0.05

    @property
    def active(self) -> int:
        """Calls between their headers and their trailers."""
        return self._active

    async def wait_idle(self) -> None:
        """Return once no call is in progress."""
        await self._idle.wait()

    async def handle(self, stream: Stream[Any, Any], path: str, kind: str, answer: Answer) -> None:
        """Run ``answer``, then write the trailers with its status and the request id.

        A call counts as in progress from its headers until its trailers are
        written: a drain lets it finish even if its body is still arriving,
        and never closes a connection under an answer.
        """
        started = time.perf_counter()
        method = path.rsplit("/", 1)[1]
        request_id = _request_id(stream)
        span = self._tracing.server_call(path, stream, request_id)
        trailers = {"x-request-id": request_id}
        status, message = Status.OK, None
        failure: BaseException | None = None  # logged with its traceback, never sent
        # Counted last, right before the try whose finally uncounts it.
        self._metrics.call_started(method, kind)
        self._active += 1
        self._idle.clear()
        try:
            try:
                await answer(stream)
            except Exception as exc:
                error = to_grpc_error(exc)
                if error is None:
                    raise
                # grpclib follows an error status with RST_STREAM(NO_ERROR): a
                # client still sending a refused body is told to stop.
                status, message = error.status, error.message
                if status is Status.INTERNAL:
                    failure = exc.__cause__ or exc
                pushback = pushback_ms(exc, self.turnover, _IDS.random())
                if pushback is not None:
                    add_trailer(stream, PUSHBACK, pushback)
                await stream.send_trailing_metadata(
                    status=status, status_message=message, metadata=trailers
                )
                return
            await stream.send_trailing_metadata(metadata=trailers)
        except asyncio.CancelledError:
            deadline = stream.deadline
            if deadline is not None and deadline.time_remaining() <= 0:
                status, message = Status.DEADLINE_EXCEEDED, "the deadline passed"
            else:
                status, message = Status.CANCELLED, "the client cancelled the call"
            raise
        except GRPCError as exc:  # grpclib's own, e.g. when the trailers cannot be sent
            status, message = exc.status, exc.message
            raise
        except BaseException as exc:
            status, message = Status.UNKNOWN, "the server failed unexpectedly"
            failure = exc
            raise
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()
            seconds = time.perf_counter() - started
            if status is Status.OK and kind == "unary":
                self.turnover += (seconds - self.turnover) * _TURNOVER_WEIGHT
            span.end(status, message)
            self._metrics.call_finished(method, kind, status.name, seconds)
            _log(stream, path, status, message, seconds, request_id, failure)


def _log(
    stream: Stream[Any, Any],
    path: str,
    status: Status,
    message: str | None,
    seconds: float,
    request_id: str,
    failure: BaseException | None,
) -> None:
    level = logging.WARNING
    if status in {Status.INTERNAL, Status.UNKNOWN}:
        level = logging.ERROR
    elif status in {Status.OK, Status.CANCELLED}:
        # A client that leaves is no fault of the server's, and a flood of
        # resets must not become a flood of log lines; the metrics count them.
        level = logging.DEBUG
    if log.isEnabledFor(level):
        log.log(
            level,
            "rpc method=%s status=%s duration_ms=%.1f peer=%s request_id=%s%s",
            path,
            status.name,
            seconds * 1000,
            _peer(stream),
            request_id,
            "" if message is None else f" message={message!r}",
            exc_info=failure,
        )


def metadata(stream: Stream[Any, Any], key: str) -> str | None:
    """The call's text metadata ``key``, if it sent one."""
    value = stream.metadata.get(key) if stream.metadata is not None else None
    return value if isinstance(value, str) else None


# Unique enough to find a call in the logs, without a system call per call (as
# os.urandom makes); not the module's generator, which a model may seed.
_IDS = random.Random()  # noqa: S311


def _request_id(stream: Stream[Any, Any]) -> str:
    """The client's x-request-id if it sent a sensible one, else a new one."""
    offered = metadata(stream, "x-request-id")
    # Only characters that cannot pass for another field of the log line.
    if offered and len(offered) <= 64 and _REQUEST_ID.fullmatch(offered):
        return offered
    return f"{_IDS.getrandbits(64):016x}"


def _peer(stream: Stream[Any, Any]) -> str:
    address = stream.peer.addr()
    if address is None:
        return "-"
    return format_address(str(address[0]), int(address[1]))
