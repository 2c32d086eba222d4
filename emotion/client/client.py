"""A thin async client over the generated stub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from types import TracebackType

from grpclib.client import Channel
from grpclib.exceptions import StreamTerminatedError

from emotion.codec import ProtobufCodec
from emotion.config import DEFAULT_MAX_IMAGE_SIZE, DEFAULT_TARGET, ClientTls
from emotion.config.settings import parse_target as parse_target
from emotion.contract import (
    RUN_PIPELINE_PATH,
    STREAM_PIPELINE_PATH,
    PipelineStub,
    Request,
    Response,
)
from emotion.observability.tracing import NoTracing, Tracer
from emotion.transport.client import told_to_go_away


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
    ) -> None:
        host, port = parse_target(target)
        self.target = target
        self.timeout = timeout
        self.max_image_size = max_image_size
        self._channel = Channel(
            host, port, ssl=None if tls is None else tls.context(), codec=ProtobufCodec()
        )
        self._metadata = {} if token is None else {"authorization": f"Bearer {token}"}
        self._tracing = tracing or NoTracing()
        self.stub = PipelineStub(self._channel, timeout=timeout, metadata=self._metadata or None)

    async def predict(self, image: bytes, *, timeout: float | None = None) -> Response:
        """Run the pipeline on the bytes of one image file."""
        self._check_size(image)
        request = Request(image=image)
        with self._tracing.client_call(RUN_PIPELINE_PATH) as trace:
            metadata = self._with(trace)
            for _ in range(2):
                try:
                    return await self.stub.run_pipeline(request, timeout=timeout, metadata=metadata)
                except StreamTerminatedError:
                    # A server retiring its connection (GOAWAY, --max-connection-age)
                    # can cross a call on the wire; such a call did not run, and
                    # inference is safe to repeat. A connection that broke without
                    # a GOAWAY (a crashed server) is not retried.
                    if not told_to_go_away(self._channel):
                        raise
                    await asyncio.sleep(0.01)  # let the channel drop the old connection
            return await self.stub.run_pipeline(request, timeout=timeout, metadata=metadata)

    async def stream(
        self,
        images: AsyncIterable[bytes] | Iterable[bytes],
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[Response]:
        """Run the pipeline on many images over one call: one Response per image, in order.

        The server takes a few images at a time; HTTP/2 flow control makes
        this wait while it catches up, so ``images`` may be an endless camera feed.
        """

        failure: list[BaseException] = []

        async def requests() -> AsyncIterator[Request]:
            # The stub sends from a task of its own that would swallow an
            # error here and leave the call hanging: end the stream instead,
            # and raise the error once the answers so far are delivered.
            try:
                if isinstance(images, AsyncIterable):
                    async for image in images:
                        self._check_size(image)
                        yield Request(image=image)
                else:
                    for image in images:
                        self._check_size(image)
                        yield Request(image=image)
            except Exception as exc:
                failure.append(exc)

        with self._tracing.client_call(STREAM_PIPELINE_PATH) as trace:
            answers = self.stub.stream_pipeline(
                requests(), timeout=timeout, metadata=self._with(trace)
            )
            async for response in answers:
                yield response
        if failure:
            raise failure[0]

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
