"""`emotion.v1.Pipeline` on grpclib: its routes, and how each answers."""

from __future__ import annotations

import asyncio
import collections
import functools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpclib.const
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from emotion.codec import Encoded, parse
from emotion.config import Limits
from emotion.contract import (
    DESCRIBE_PATH,
    LEGACY_RUN_PIPELINE_PATH,
    RUN_PIPELINE_PATH,
    STREAM_PIPELINE_PATH,
    DescribeRequest,
    DescribeResponse,
    PipelineBase,
    Request,
    Response,
    ServerLimits,
)
from emotion.decode import InvalidImage
from emotion.inference.backend import Backend
from emotion.model import InvalidOptions, check_options
from emotion.serving.admission import Admission, NotServing
from emotion.serving.calls import Calls, metadata
from emotion.serving.description import described
from emotion.serving.tracks import StreamTracks
from emotion.transport.messages import Patience, ReceiveBudget, receive_message, send_message

if TYPE_CHECKING:
    from grpclib.metadata import Deadline

#: A Pipeline call's stream; answers go out already encoded (emotion.codec.Encoded).
_Stream = Stream[Request, Response | Encoded]


class PipelineService(PipelineBase):
    """Answers Pipeline calls from one inference backend, threads or processes alike.

    Each call is checked at its headers, its messages are read with the size
    limit, in time, within the worker's receive budget; it takes its place in
    the queue once its first message has arrived, and each image is one run
    of the ``backend`` (emotion.inference.backend).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        admission: Admission,
        calls: Calls,
        limits: Limits,
        window: int = 2,
        server_limits: ServerLimits | None = None,
    ) -> None:
        self._backend = backend
        self._admission = admission
        self._calls = calls
        self.limits = limits
        #: What Describe states of the limits (the server's whole config knows more).
        self.server_limits = server_limits or ServerLimits()
        self._described: Encoded | None = None
        self._patience = Patience(limits.body_timeout)
        self._receiving = ReceiveBudget(limits.max_receiving)
        # Images of one stream in progress at once: enough to keep the threads busy.
        self._window = window
        self._streams: set[_InOrder] = set()

    async def run_pipeline(self, message: Request, deadline: Deadline | None = None) -> Response:
        """Decode and infer; a failure raises what emotion.serving.statuses maps to a status.

        A call whose ``deadline`` passes while it waits for the backend never
        reaches the model.
        """
        return parse(Response, (await self._answer_image(message, deadline)).data)

    async def describe(self, message: DescribeRequest) -> DescribeResponse:
        """What the server serves and accepts; see :meth:`_describe` for the route."""
        return parse(DescribeResponse, self._description().data)

    async def _answer_image(self, message: Request, deadline: Deadline | None) -> Encoded:
        check_options(message.options)
        instant = None if deadline is None else time.monotonic() + deadline.time_remaining()
        return Encoded(await self._backend.run(message.image, instant, message.options))

    async def _describe(self, stream: Stream[DescribeRequest, DescribeResponse | Encoded]) -> None:
        """Describe: checked like any call, answered without the queue or the model."""
        self._admission.check(metadata(stream, "authorization"))
        request = await receive_message(
            stream,
            DescribeRequest,
            limit=self.limits.max_message_size,
            patience=self._patience,
            first=True,
        )
        if request is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "the call ended without a request message")
        answer = self._description()
        await send_message(stream, answer, len(answer.data))

    def _description(self) -> Encoded:
        # Known once the model serves, which admission checked; the same from then on.
        if self._described is None:
            self._described = described(self._backend.description, self.server_limits)
        return self._described

    async def _answer_one(self, stream: _Stream) -> None:
        self._admission.check(metadata(stream, "authorization"))
        request = await self._receive(stream, first=True)
        if request is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "the call ended without a request message")
        with self._admission.hold():
            encoded = await self._answer_image(request, stream.deadline)
            # The answer may wait for a client that reads nothing (a zero
            # flow-control window): the image is not kept meanwhile.
            del request
            await send_message(stream, encoded, len(encoded.data))

    async def _answer_stream(self, stream: _Stream) -> None:
        """Answer each image of the stream in order, a few at a time.

        Up to ``window`` images are decoded and inferred at once; the next is
        read only when the oldest has been answered, so HTTP/2 flow control
        holds back a client that sends faster than the model runs. Each image
        in progress takes a place in the queue, as a unary call does. A call
        whose first request asks for tracking has its answers tracked, in
        order, and ends with the tracks' summary (emotion.serving.tracks).
        """
        self._admission.check(metadata(stream, "authorization"))
        first = True

        async def receive(stream: _Stream) -> Request | None:
            nonlocal first
            request = await self._receive(stream, first=first)
            first = False
            return request

        in_order = _InOrder(stream, self._window, receive, self._frame)
        self._streams.add(in_order)
        try:
            await in_order.answer()
        finally:
            self._streams.discard(in_order)

    def stop_taking_images(self) -> None:
        """At a drain: each stream answers the images it has taken, then ends UNAVAILABLE.

        A stream's client may send for as long as it likes; a drain that
        waited for it would wait out its grace and abort the images in
        progress. Ended this way, the client has every answer to what it
        sent and sends the rest elsewhere (emotion.Client does so itself).
        """
        for in_order in list(self._streams):
            in_order.stop_reading()

    async def _receive(self, stream: _Stream, *, first: bool = False) -> Request | None:
        """The call's next request message, or None at its end."""
        return await receive_message(
            stream,
            Request,
            limit=self.limits.max_message_size,
            patience=self._patience,
            first=first,
            budget=self._receiving,
        )

    async def _frame(self, request: Request, index: int, stream: _Stream) -> Encoded:
        # Each image holds a place from its arrival to its answer: a stream that
        # waits for its next image holds none, however long it waits.
        with self._admission.hold():
            try:
                return await self._answer_image(request, stream.deadline)
            except (InvalidImage, InvalidOptions) as exc:
                raise type(exc)(f"image {index}: {exc}") from None

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        unary = grpclib.const.Cardinality.UNARY_UNARY
        streaming = grpclib.const.Cardinality.STREAM_STREAM
        pipeline = (Request, Response)
        describe = (DescribeRequest, DescribeResponse)
        routes: list[tuple[str, grpclib.const.Cardinality, str, Any, tuple[type, type]]] = [
            (RUN_PIPELINE_PATH, unary, "unary", self._answer_one, pipeline),
            (LEGACY_RUN_PIPELINE_PATH, unary, "unary", self._answer_one, pipeline),
            (STREAM_PIPELINE_PATH, streaming, "bidi_stream", self._answer_stream, pipeline),
            (DESCRIBE_PATH, unary, "unary", self._describe, describe),
        ]
        return {
            path: grpclib.const.Handler(
                functools.partial(self._calls.handle, path=path, kind=kind, answer=answer),
                cardinality,
                *messages,
            )
            for path, cardinality, kind, answer, messages in routes
        }


class _InOrder:
    """One StreamPipeline call: a reader task takes images in, answers go out in order."""

    def __init__(
        self,
        stream: _Stream,
        window: int,
        receive: Callable[[_Stream], Awaitable[Request | None]],
        infer: Callable[[Request, int, _Stream], Awaitable[Encoded]],
    ) -> None:
        self._stream = stream
        self._receive = receive
        self._infer = infer
        self._room = asyncio.Semaphore(window)
        # Each image's answer in progress, and its time in a tracked call.
        self._in_order: collections.deque[tuple[asyncio.Task[Encoded], float]] = collections.deque()
        self._tracks: StreamTracks | None = None
        self._arrived = asyncio.Event()
        self._ended: list[BaseException | None] = []
        self._reader: asyncio.Task[None] | None = None
        self._stopping = False

    def stop_reading(self) -> None:
        """Take no more images: answer those taken, then end the call UNAVAILABLE."""
        self._stopping = True
        if self._reader is not None:
            self._reader.cancel()

    async def answer(self) -> None:
        reader = self._reader = asyncio.ensure_future(self._read())
        try:
            while True:
                if not self._in_order:
                    if self._ended:
                        if self._ended[0] is not None:
                            raise self._ended[0]
                        if self._tracks is not None:
                            summary = self._tracks.summary()
                            await send_message(self._stream, summary, len(summary.data))
                        return
                    self._arrived.clear()
                    await self._arrived.wait()
                    continue
                task, time = self._in_order[0]
                answer = await task
                self._in_order.popleft()
                self._room.release()
                if self._tracks is not None:
                    answer = self._tracks.follow(answer, time)
                await send_message(self._stream, answer, len(answer.data))
        finally:
            reader.cancel()
            for task, _ in self._in_order:
                task.cancel()
                # Retrieve how it ends, so asyncio does not report it as lost.
                task.add_done_callback(_retrieve)

    async def _read(self) -> None:
        index = 0
        ended: BaseException | None = None
        try:
            while not self._stopping:
                await self._room.acquire()  # wait for room before reading: flow control
                request = await self._receive(self._stream)
                if request is None:
                    break
                time = 0.0
                if index == 0:
                    self._tracks = StreamTracks.asked(request)
                if self._tracks is not None:
                    time = self._tracks.time_of(request, index)
                frame = self._infer(request, index, self._stream)
                self._in_order.append((asyncio.ensure_future(frame), time))
                self._arrived.set()
                index += 1
        except asyncio.CancelledError:
            if not self._stopping:
                raise  # the call is over: answer() cancels its reader on the way out
        except Exception as exc:  # a refusal, or a broken stream
            ended = exc
        if self._stopping and ended is None:
            ended = NotServing("server is shutting down; send the other images to another")
        self._ended.append(ended)
        self._arrived.set()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
