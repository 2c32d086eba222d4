"""The async client: the generated stub's calls, retried and resumed as a deployment needs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from types import TracebackType

from grpclib.metadata import Deadline

from emotion.client.retries import Retries
from emotion.client.streams import Feed, stream_pipeline
from emotion.codec import ProtobufCodec
from emotion.config import DEFAULT_MAX_IMAGE_SIZE, DEFAULT_TARGET, ClientTls
from emotion.config.client import RetryPolicy
from emotion.config.settings import parse_target as parse_target
from emotion.contract import (
    RUN_PIPELINE_PATH,
    STREAM_PIPELINE_PATH,
    PipelineStub,
    Request,
    Response,
)
from emotion.observability.tracing import NoTracing, Tracer
from emotion.transport.client import ClientChannel, UnaryCall

#: What a Client retries unless told otherwise: see RetryPolicy.
DEFAULT_RETRY = RetryPolicy()


class Client:
    """Connects lazily on the first call; use ``async with`` to close the channel.

    ``tls`` turns on TLS (and mutual TLS when it names a certificate);
    ``token`` is sent as ``authorization: Bearer <token>`` on every call;
    images over ``max_image_size`` are refused before they are sent.
    ``stub`` is the generated PipelineStub for anything the helpers do not cover.
    Answers are read strictly: one that is not a valid Response (a broken or
    hostile server) raises :class:`emotion.codec.InvalidMessage`.
    Each call carries the caller's OpenTelemetry trace (``traceparent``), if
    it has one; with ``tracing``, each call also gets a CLIENT span of its own.

    A call that fails for a reason a new try can mend (the server restarting,
    draining, busy, a worker that died) is tried again, as ``retry`` says,
    within the call's one deadline; a stream goes on over a new call. With
    ``retry=None`` every failure reaches the caller. See docs/client.md.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = None,
        tls: ClientTls | None = None,
        token: str | None = None,
        max_image_size: int = DEFAULT_MAX_IMAGE_SIZE,
        tracing: Tracer | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
    ) -> None:
        host, port = parse_target(target)
        self.target = target
        self.timeout = timeout
        self.max_image_size = max_image_size
        self._channel = ClientChannel(
            host, port, ssl=None if tls is None else tls.context(), codec=ProtobufCodec()
        )
        self._metadata = {} if token is None else {"authorization": f"Bearer {token}"}
        self._tracing = tracing or NoTracing()
        self.stub = PipelineStub(self._channel, timeout=timeout, metadata=self._metadata or None)
        self.retry = retry
        self._retries = None if retry is None else Retries(retry)

    async def predict(self, image: bytes, *, timeout: float | None = None) -> Response:
        """Run the pipeline on the bytes of one image file."""
        self._check_size(image)
        request = Request(image=image)
        with self._tracing.client_call(RUN_PIPELINE_PATH) as trace:
            metadata = self._with(trace)
            retries = self._retries
            deadline = self._deadline(timeout)
            tries = None
            while True:
                call = UnaryCall(
                    self._channel,
                    RUN_PIPELINE_PATH,
                    Request,
                    Response,
                    deadline=deadline,
                    metadata=metadata,
                )
                try:
                    response = await call.unary(request)
                except Exception as exc:
                    if retries is None:
                        raise
                    tries = tries or retries.tries(deadline)
                    delay = tries.after(exc, call)
                    if delay is None:
                        raise
                    await asyncio.sleep(delay)
                else:
                    if retries is not None:
                        retries.succeeded()
                    assert response is not None
                    return response

    async def stream(
        self,
        images: AsyncIterable[bytes] | Iterable[bytes],
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[Response]:
        """Run the pipeline on many images over one call: one Response per image, in order.

        The server takes a few images at a time; HTTP/2 flow control makes
        this wait while it catches up, so ``images`` may be an endless camera feed.
        A call cut under the stream is followed by a new one, which sends
        again the images not yet answered: each answer comes once, in order,
        and ``images`` is asked for each image once. An image that ``images``
        fails to give is raised once the images before it are answered.
        """
        feed = Feed(images, self._check_size)
        with self._tracing.client_call(STREAM_PIPELINE_PATH) as trace:
            answers = stream_pipeline(
                self._channel, self._retries, feed, self._deadline(timeout), self._with(trace)
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

    def _check_size(self, image: bytes) -> None:
        # Refuse locally what the server would refuse after the upload.
        if len(image) > self.max_image_size:
            raise ValueError(
                f"image is {len(image)} bytes; this client sends at most {self.max_image_size} "
                f"(a server takes {DEFAULT_MAX_IMAGE_SIZE} by default: to send more, raise "
                "the server's --max-message-size and this limit together)"
            )

    def close(self) -> None:
        """Close the connection; a call it cuts raises, however the retries are set."""
        if self._retries is not None:
            self._retries.closed = True
        self._channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
