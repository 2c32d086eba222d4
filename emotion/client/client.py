"""The async client: the generated stub's calls, retried and resumed as a deployment needs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from types import TracebackType

from grpclib.client import Channel
from grpclib.metadata import Deadline

from emotion.client.balancing import Balancer
from emotion.client.describe import ImageLimit
from emotion.client.retries import Retries
from emotion.client.streams import Feed, stream_pipeline
from emotion.codec import ProtobufCodec
from emotion.config import DEFAULT_TARGET, ClientTls
from emotion.config.client import ConnectionPolicy, RetryPolicy
from emotion.config.settings import parse_target as parse_target
from emotion.config.settings import parse_targets
from emotion.contract import (
    RUN_PIPELINE_PATH,
    STREAM_PIPELINE_PATH,
    DescribeRequest,
    DescribeResponse,
    Options,
    PipelineStub,
    Request,
    Response,
)
from emotion.observability.tracing import NoTracing, Tracer
from emotion.transport.client import UnaryCall, channel_to

#: What a Client retries unless told otherwise: see RetryPolicy.
DEFAULT_RETRY = RetryPolicy()
#: How a Client spreads its calls unless told otherwise: see ConnectionPolicy.
DEFAULT_CONNECTIONS = ConnectionPolicy()


class Client:
    """Connects lazily on the first call; use ``async with`` to close its connections.

    ``target`` is ``host:port``, or several, as a list or separated by
    commas; a name stands for every address it resolves to (a headless
    Service's pods), resolved again as the client goes. Calls are spread
    over all of them and over several connections to each, as
    ``connections`` says, the least busy connection first.

    ``tls`` turns on TLS (and mutual TLS when it names a certificate);
    ``token`` is sent as ``authorization: Bearer <token>`` on every call;
    images over ``max_image_size`` are refused before they are sent (by
    default, over what the server says it takes: see :meth:`describe`).
    ``stub`` is the generated PipelineStub for anything the helpers do not cover.
    Answers are read strictly: one that is not a valid Response (a broken or
    hostile server) raises :class:`emotion.codec.InvalidMessage`.
    Each call carries the caller's OpenTelemetry trace (``traceparent``), if
    it has one; with ``tracing``, each call also gets a CLIENT span of its own.

    A call that fails for a reason a new try can mend (the server restarting,
    draining, busy, a worker that died, an address that refuses) is tried
    again, as ``retry`` says, within the call's one deadline; a stream goes
    on over a new call. With ``retry=None`` every failure reaches the
    caller. ``stub`` is one plain channel to the first target: no retries,
    no spreading. See docs/client.md.
    """

    def __init__(
        self,
        target: str | Sequence[str] = DEFAULT_TARGET,
        *,
        timeout: float | None = None,
        tls: ClientTls | None = None,
        token: str | None = None,
        max_image_size: int | None = None,
        tracing: Tracer | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        connections: ConnectionPolicy = DEFAULT_CONNECTIONS,
    ) -> None:
        targets = parse_targets(target)
        self.target = target if isinstance(target, str) else ",".join(target)
        self.timeout = timeout
        self._image_limit = ImageLimit(max_image_size)
        self._ssl = None if tls is None else tls.context()
        self._codec = ProtobufCodec()
        self._metadata = {} if token is None else {"authorization": f"Bearer {token}"}
        self._tracing = tracing or NoTracing()
        host, port = targets[0]
        self._stub_channel = Channel(host, port, ssl=self._ssl, codec=self._codec)
        self.stub = PipelineStub(
            self._stub_channel, timeout=timeout, metadata=self._metadata or None
        )
        self.retry = retry
        self._retries = None if retry is None else Retries(retry)
        self.connections = connections
        self._balancer = Balancer(targets, connections, self._open_channel)

    def _open_channel(self, address: str, port: int, name: str) -> Channel:
        return channel_to(address, port, name=name, ssl=self._ssl, codec=self._codec)

    async def predict(
        self, image: bytes, *, timeout: float | None = None, options: Options | None = None
    ) -> Response:
        """Run the pipeline on the bytes of one image file, as ``options`` ask."""
        await self._check_size(image)
        request = Request(image=image, options=options)
        with self._tracing.client_call(RUN_PIPELINE_PATH) as trace:
            metadata = self._with(trace)
            retries = self._retries
            balancer = self._balancer
            deadline = self._deadline(timeout)
            tries = None
            while True:
                connection = await balancer.pick()
                call = UnaryCall(
                    connection.channel,
                    RUN_PIPELINE_PATH,
                    Request,
                    Response,
                    deadline=deadline,
                    metadata=metadata,
                )
                try:
                    response = await call.unary(request)
                except BaseException as exc:
                    balancer.release(connection, exc)
                    if retries is None or not isinstance(exc, Exception):
                        raise
                    tries = tries or retries.tries(deadline)
                    delay = tries.after(exc, call, elsewhere=balancer.elsewhere(connection))
                    if delay is None:
                        raise
                    await asyncio.sleep(delay)
                else:
                    balancer.release(connection, None)
                    if retries is not None:
                        retries.succeeded()
                    assert response is not None
                    return response

    async def stream(
        self,
        images: AsyncIterable[bytes] | Iterable[bytes],
        *,
        timeout: float | None = None,
        options: Options | None = None,
    ) -> AsyncIterator[Response]:
        """Run the pipeline on many images over one call: one Response per image, in order.

        Every image is sent with ``options``.

        The server takes a few images at a time; HTTP/2 flow control makes
        this wait while it catches up, so ``images`` may be an endless camera feed.
        A call cut under the stream is followed by a new one, which sends
        again the images not yet answered: each answer comes once, in order,
        and ``images`` is asked for each image once. An image that ``images``
        fails to give is raised once the images before it are answered.

        With ``options.tracking`` set, each face carries its track id and
        smoothed expression, and one more Response, with ``summary`` set and
        answering no image, comes last (emotion.client.streams says what a
        cut does to ids).
        """
        feed = Feed(images, self._check_size)
        with self._tracing.client_call(STREAM_PIPELINE_PATH) as trace:
            answers = stream_pipeline(
                self._balancer,
                self._retries,
                feed,
                self._deadline(timeout),
                self._with(trace),
                options,
            )
            async with contextlib.aclosing(answers):
                async for response in answers:
                    yield response

    def _deadline(self, timeout: float | None) -> Deadline | None:
        """One deadline for a call's every try: retrying never extends it."""
        timeout = self.timeout if timeout is None else timeout
        return None if timeout is None else Deadline.from_timeout(timeout)

    def _with(self, trace: dict[str, str] | None) -> dict[str, str] | None:
        """The call's metadata: the stub's own, or that and the trace's headers."""
        if not trace:
            return self._metadata or None
        return {**self._metadata, **trace}

    async def describe(self, *, timeout: float | None = None) -> DescribeResponse:
        """What the server serves and accepts: its model, version, labels and limits.

        Not retried. From then on, the server's largest message bounds the
        images this client sends (unless ``max_image_size`` was given).
        """
        answer = await self.stub.describe(
            DescribeRequest(),
            timeout=self.timeout if timeout is None else timeout,
            metadata=self._metadata or None,
        )
        self._image_limit.learn(answer)
        return answer

    @property
    def max_image_size(self) -> int:
        """The largest image this client sends now: the one given, or the server's once known."""
        return self._image_limit.size

    async def _check_size(self, image: bytes) -> None:
        # Refuse locally what the server would refuse after the upload.
        await self._image_limit.check(image, self.describe)

    def close(self) -> None:
        """Close the connection; a call it cuts raises, however the retries are set."""
        if self._retries is not None:
            self._retries.closed = True
        self._balancer.close()
        self._stub_channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
