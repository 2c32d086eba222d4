"""A RunPipeline server that fails calls as a test says, to watch a client's retries."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import grpclib.const
import grpclib.server
from grpclib.const import Cardinality, Status
from grpclib.server import Stream

from emotion import Request, Response, Result, RetryPolicy
from emotion.codec import ProtobufCodec
from emotion.contract import RUN_PIPELINE_PATH
from emotion.errors import PUSHBACK
from emotion.transport.trailers import add_trailer

#: Retries without waiting long: the tests measure what they wait for.
QUICK = RetryPolicy(initial_backoff=0.01, max_backoff=0.01)


class Scripted:
    """Answers RunPipeline with the failures it is given, in turn, then with an answer.

    Each failure is a status and the pushback to send with it (None: none).
    """

    def __init__(self) -> None:
        self.failures: list[tuple[Status, str | None]] = []
        self.always: tuple[Status, str | None] | None = None
        self.delay = 0.0
        self.tries: list[float] = []  # when each try arrived
        self.metadata: list[dict[str, str]] = []  # what each try carried
        self.peers: list[object] = []  # the client's address of each try's connection
        self.cancelled = 0  # tries the client gave up on while they ran

    async def _unary(self, stream: Stream[Request, Response]) -> None:
        self.tries.append(time.monotonic())
        self.metadata.append({k: str(v) for k, v in (stream.metadata or {}).items()})
        self.peers.append(stream.peer.addr())
        await stream.recv_message()
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        failure = self.failures.pop(0) if self.failures else self.always
        if failure is None:
            await stream.send_message(Response(response=[Result()]))
            return
        status, pushback = failure
        if pushback is not None:
            add_trailer(stream, PUSHBACK, pushback)
        await stream.send_trailing_metadata(status=status, status_message="scripted")

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        unary = Cardinality.UNARY_UNARY
        return {RUN_PIPELINE_PATH: grpclib.const.Handler(self._unary, unary, Request, Response)}


@contextlib.asynccontextmanager
async def serve_scripted(
    host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[tuple[Scripted, str]]:
    """A Scripted server on ``host`` (an ephemeral port unless given), and its target."""
    service = Scripted()
    server = grpclib.server.Server([service], codec=ProtobufCodec())
    listener = socket.create_server((host, port))
    await server.start(sock=listener)
    try:
        yield service, f"{host}:{listener.getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()
