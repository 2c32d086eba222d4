"""`emotion.v1.Pipeline` on grpclib: decode and inference off the event loop."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import enum
import functools
import hmac
import logging
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpclib.const
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.server import Stream
from PIL import Image

from emotion.batching import Batcher
from emotion.config import Limits
from emotion.contract import (
    LEGACY_RUN_PIPELINE_PATH,
    RUN_PIPELINE_PATH,
    STREAM_PIPELINE_PATH,
    PipelineBase,
    Request,
    Response,
)
from emotion.decode import Decoded, InvalidImage, decode
from emotion.model import Model
from emotion.transport import (
    CompressedMessage,
    MessageTooLarge,
    receive_message,
)

if TYPE_CHECKING:
    from grpclib.metadata import Deadline

    from emotion.metrics import Metrics

T = TypeVar("T")
U = TypeVar("U")

log = logging.getLogger(__name__)


class State(enum.Enum):
    LOADING = "loading"
    SERVING = "serving"
    DRAINING = "draining"


class ModelFailure(Exception):
    """The model raised, or broke its contract; the message is safe for clients."""


class DeadlinePassed(Exception):
    """The call's deadline passed before an inference thread could take it."""


class PipelineService(PipelineBase):
    """Serves one model instance.

    Decoding and ``process_sample`` are CPU-bound, so each call runs them
    together in ``executor``: the event loop stays free for health checks,
    cancellations and other calls however slow one image is.
    """

    def __init__(
        self,
        model: Model,
        executor: concurrent.futures.Executor,
        *,
        threads: int = 1,
        limits: Limits | None = None,
        tokens: Sequence[str] = (),
        metrics: Metrics | None = None,
        max_batch_size: int = 1,
        max_batch_delay: float = 0.0,
    ) -> None:
        self._model = model
        self._executor = executor
        self.limits = limits or Limits()
        self._capacity = threads + self.limits.max_queue
        # Images of one stream in progress at once: enough to keep the threads busy.
        self._stream_window = max(2, threads)
        self._tokens = [token.encode() for token in tokens]
        self._metrics = metrics
        self._pending = 0
        # Inference jobs submitted and not finished (waiting or running).
        self._jobs = 0
        self._jobs_lock = threading.Lock()
        self._batcher = None
        if max_batch_size > 1:
            self._batcher = Batcher(
                self._run_batch,
                executor,
                max_size=max_batch_size,
                max_delay=max_batch_delay,
                on_batch=None if metrics is None else metrics.batch_size.observe,
            )
        self._state = State.LOADING
        self._active_calls = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Resolved by abort_calls(); every running call waits on it beside its work.
        # Made on first use, inside the loop that serves.
        self._abort: asyncio.Future[None] | None = None
        # Inference threads still working, including those whose caller left.
        self._inferring = 0
        self._inferring_lock = threading.Lock()

    @property
    def state(self) -> State:
        return self._state

    @property
    def active_calls(self) -> int:
        return self._active_calls

    @property
    def inferring(self) -> int:
        """Threads inside decode or the model right now, abandoned calls included."""
        return self._inferring

    def start_serving(self) -> None:
        self._state = State.SERVING

    def start_draining(self) -> None:
        """Refuse new calls with UNAVAILABLE; calls already running go on."""
        self._state = State.DRAINING

    def abort_calls(self) -> None:
        """End every running call now with UNAVAILABLE; their threads finish unobserved."""
        self.start_draining()
        abort = self._abort_signal()
        if not abort.done():
            abort.set_result(None)

    async def wait_idle(self) -> None:
        """Return once no call is running."""
        await self._idle.wait()

    async def run_pipeline(self, message: Request, deadline: Deadline | None = None) -> Response:
        """Decode and infer; every failure is a GRPCError with the status a client needs.

        A call whose ``deadline`` passes while it waits for an inference
        thread never reaches the model.
        """
        if self._batcher is None:
            return await self._outcome(self._submit(self._decode_and_run, message.image, deadline))
        decoded = await self._outcome(self._submit(self._decode, message.image, deadline))
        response = await self._outcome(self._batcher.submit(decoded.image))
        _to_full_size_if_reduced(response, decoded)
        return response

    async def _outcome(self, job: concurrent.futures.Future[T] | Awaitable[T]) -> T:
        """The result of ``job``, unless the call ends first; errors as GRPCError.

        A job still waiting in the executor when its call ends (the client
        left, the deadline passed, the server aborted) is withdrawn and never
        runs; one already running finishes unobserved, its failures logged.
        """
        if isinstance(job, concurrent.futures.Future):
            work: asyncio.Future[T] = asyncio.wrap_future(job)
        else:
            work = asyncio.ensure_future(job)
        try:
            await asyncio.wait((work, self._abort_signal()), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            _abandon(job, work)
            raise
        if not work.done():
            _abandon(job, work)
            raise GRPCError(Status.UNAVAILABLE, "server shut down before the call finished; retry")
        try:
            return work.result()
        except InvalidImage as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
        except ModelFailure as exc:
            log.error("%s", exc, exc_info=exc.__cause__)
            raise GRPCError(Status.INTERNAL, str(exc)) from None
        except DeadlinePassed:
            raise GRPCError(
                Status.DEADLINE_EXCEEDED, "the deadline passed while the call waited for the model"
            ) from None

    def _admit(self, stream: Stream[Request, Response]) -> None:
        """Refuse a call from its headers alone: credentials, state, capacity."""
        if self._tokens:
            self._authenticate(stream)
        if self._state is State.LOADING:
            raise GRPCError(Status.UNAVAILABLE, "model is still loading; retry shortly")
        if self._state is State.DRAINING:
            raise GRPCError(Status.UNAVAILABLE, "server is shutting down; retry on another")
        if self._pending >= self._capacity:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"server is busy: {self._pending} calls are in progress; retry with backoff",
            )

    def _authenticate(self, stream: Stream[Request, Response]) -> None:
        value = _metadata(stream, "authorization")
        scheme, _, credentials = (value or "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():  # schemes ignore case
            raise GRPCError(
                Status.UNAUTHENTICATED, "missing credentials: send 'authorization: Bearer <token>'"
            )
        offered = credentials.strip().encode()
        # Compare with every token, always: the time taken says nothing about a match.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(offered, token)
        if not matched:
            raise GRPCError(Status.UNAUTHENTICATED, "the bearer token is not valid")

    async def _handle_call(
        self,
        stream: Stream[Request, Response],
        path: str,
        answer: Callable[[Stream[Request, Response]], Awaitable[None]],
    ) -> None:
        """What every Pipeline call gets around ``answer``: admission, status, logs, metrics."""
        # A call counts as running from its headers until its trailers are
        # written: a drain lets it finish even if its body is still arriving,
        # and never closes a connection under an answer.
        started = time.perf_counter()
        self._active_calls += 1
        self._idle.clear()
        method = path.rsplit("/", 1)[1]
        kind = "bidi_stream" if path == STREAM_PIPELINE_PATH else "unary"
        if self._metrics is not None:
            self._metrics.call_started(method, kind)
        request_id = _request_id(stream)
        reply_metadata = {"x-request-id": request_id}
        status, message = Status.OK, None
        admitted = False
        try:
            try:
                self._admit(stream)
                admitted = True
                self._enqueue(+1)
                await answer(stream)
            except GRPCError as exc:
                # grpclib follows an error status with RST_STREAM(NO_ERROR): a
                # client still sending a refused body is told to stop.
                status, message = exc.status, exc.message
                await stream.send_trailing_metadata(
                    status=status, status_message=message, metadata=reply_metadata
                )
                return
            await stream.send_trailing_metadata(metadata=reply_metadata)
        except asyncio.CancelledError:
            deadline = stream.deadline
            if deadline is not None and deadline.time_remaining() <= 0:
                status, message = Status.DEADLINE_EXCEEDED, "the deadline passed"
            else:
                status, message = Status.CANCELLED, "the client cancelled the call"
            raise
        finally:
            if admitted:
                self._enqueue(-1)
            self._active_calls -= 1
            if not self._active_calls:
                self._idle.set()
            self._record(
                stream, path, kind, status, message, time.perf_counter() - started, request_id
            )

    async def _answer_one(self, stream: Stream[Request, Response]) -> None:
        request = await self._receive_one(stream)
        await stream.send_message(await self.run_pipeline(request, stream.deadline))

    async def _answer_stream(self, stream: Stream[Request, Response]) -> None:
        """Answer each image of the stream in order, a few at a time.

        Up to ``_stream_window`` images are decoded and inferred at once; the
        next is read only when the oldest has been answered, so HTTP/2 flow
        control holds back a client that sends faster than the model runs.
        """
        room = asyncio.Semaphore(self._stream_window)
        in_order: collections.deque[asyncio.Task[Response]] = collections.deque()
        arrived = asyncio.Event()
        ended: list[BaseException | None] = []

        async def read() -> None:
            index = 0
            try:
                while True:
                    await room.acquire()  # wait for room before reading: flow control
                    request = await self._receive(stream)
                    if request is None:
                        break
                    in_order.append(asyncio.ensure_future(self._frame(request, index, stream)))
                    arrived.set()
                    index += 1
            except Exception as exc:  # GRPCError, or a broken stream
                ended.append(exc)
            else:
                ended.append(None)
            arrived.set()

        reader = asyncio.ensure_future(read())
        try:
            while True:
                if not in_order:
                    if ended:
                        if ended[0] is not None:
                            raise ended[0]
                        return
                    arrived.clear()
                    await arrived.wait()
                    continue
                answer = await in_order.popleft()
                room.release()
                await stream.send_message(answer)
        finally:
            reader.cancel()
            for task in in_order:
                task.cancel()
                # Retrieve how it ends, so asyncio does not report it as lost.
                task.add_done_callback(_retrieve)

    async def _frame(
        self, request: Request, index: int, stream: Stream[Request, Response]
    ) -> Response:
        try:
            return await self.run_pipeline(request, stream.deadline)
        except GRPCError as exc:
            if exc.status is Status.INVALID_ARGUMENT:
                raise GRPCError(exc.status, f"image {index}: {exc.message}") from None
            raise

    async def _receive_one(self, stream: Stream[Request, Response]) -> Request:
        request = await self._receive(stream)
        if request is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "the call ended without a request message")
        return request

    async def _receive(self, stream: Stream[Request, Response]) -> Request | None:
        """The call's next request message (None at its end), or the status saying what is wrong."""
        try:
            request = await receive_message(stream, Request, limit=self.limits.max_message_size)
        except MessageTooLarge as exc:
            raise GRPCError(Status.RESOURCE_EXHAUSTED, str(exc)) from None
        except CompressedMessage as exc:
            raise GRPCError(Status.UNIMPLEMENTED, str(exc)) from None
        except (GRPCError, StreamTerminatedError, ProtocolError):
            raise
        except Exception as exc:  # MalformedMessage, and the protobuf parsers' errors
            reason = str(exc) or type(exc).__name__
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"request is not a valid emotion.v1.Request: {reason}"
            ) from None
        return request

    def _enqueue(self, change: int) -> None:
        self._pending += change

    def _submit(
        self, step: Callable[[U], T], argument: U, deadline: Deadline | None
    ) -> concurrent.futures.Future[T]:
        """Queue a job for an inference thread, or refuse it if the queue is full."""
        with self._jobs_lock:
            if self._jobs >= self._capacity:
                raise GRPCError(
                    Status.RESOURCE_EXHAUSTED,
                    f"server is busy: {self._jobs} images are waiting for the model; "
                    "retry with backoff",
                )
            self._jobs += 1
        if self._metrics is not None:
            self._metrics.queue_depth.inc()
        job = self._executor.submit(self._counted, step, argument, deadline)
        job.add_done_callback(self._job_done)  # also when withdrawn before it ran
        return job

    def _job_done(self, job: concurrent.futures.Future[Any]) -> None:
        with self._jobs_lock:
            self._jobs -= 1
        if self._metrics is not None:
            self._metrics.queue_depth.dec()

    def _record(
        self,
        stream: Stream[Request, Response],
        path: str,
        kind: str,
        status: Status,
        message: str | None,
        seconds: float,
        request_id: str,
    ) -> None:
        if self._metrics is not None:
            self._metrics.call_finished(path.rsplit("/", 1)[1], kind, status.name, seconds)
        level = logging.DEBUG if status is Status.OK else logging.WARNING
        if status in {Status.INTERNAL, Status.UNKNOWN}:
            level = logging.ERROR
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
            )

    def _abort_signal(self) -> asyncio.Future[None]:
        if self._abort is None:
            self._abort = asyncio.get_running_loop().create_future()
        return self._abort

    def _counted(self, step: Callable[[U], T], argument: U, deadline: Deadline | None) -> T:
        """Run ``step`` in an inference thread, counted in :attr:`inferring`."""
        if deadline is not None and deadline.time_remaining() <= 0:
            raise DeadlinePassed
        with self._inferring_lock:
            self._inferring += 1
        try:
            return step(argument)
        finally:
            with self._inferring_lock:
                self._inferring -= 1

    def _decode(self, data: bytes) -> Decoded:
        return decode(data, min_size=self._model.min_size, max_pixels=self.limits.max_pixels)

    def _decode_and_run(self, data: bytes) -> Response:
        decoded = self._decode(data)
        name = type(self._model).__name__
        try:
            response = self._model.process_sample(decoded.image)
        except Exception as exc:
            raise ModelFailure(f"model {name} failed: {type(exc).__name__}") from exc
        if not isinstance(response, Response):
            raise ModelFailure(
                f"model {name} returned {type(response).__name__}, not emotion.v1.Response"
            )
        _check_encodable(response, name)
        _to_full_size_if_reduced(response, decoded)
        return response

    def _run_batch(self, images: Sequence[Image.Image]) -> list[Response]:
        """``process_batch`` in an inference thread, its answer checked against the contract."""
        name = type(self._model).__name__
        with self._inferring_lock:
            self._inferring += 1
        try:
            responses = self._model.process_batch(images)
        except Exception as exc:
            raise ModelFailure(f"model {name} failed: {type(exc).__name__}") from exc
        finally:
            with self._inferring_lock:
                self._inferring -= 1
        if not isinstance(responses, list) or len(responses) != len(images):
            raise ModelFailure(
                f"model {name}.process_batch returned {_describe(responses)} "
                f"for {len(images)} images, not a list of as many emotion.v1.Response"
            )
        for response in responses:
            if not isinstance(response, Response):
                raise ModelFailure(
                    f"model {name}.process_batch returned a {type(response).__name__} "
                    "in its list, not emotion.v1.Response"
                )
            _check_encodable(response, name)
        return responses

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        unary = grpclib.const.Cardinality.UNARY_UNARY
        streaming = grpclib.const.Cardinality.STREAM_STREAM
        routes = [
            (RUN_PIPELINE_PATH, unary, self._answer_one),
            (LEGACY_RUN_PIPELINE_PATH, unary, self._answer_one),
            (STREAM_PIPELINE_PATH, streaming, self._answer_stream),
        ]
        return {
            path: grpclib.const.Handler(
                functools.partial(self._handle_call, path=path, answer=answer),
                cardinality,
                Request,
                Response,
            )
            for path, cardinality, answer in routes
        }


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/-]+")


def _metadata(stream: Stream[Request, Response], key: str) -> str | None:
    value = stream.metadata.get(key) if stream.metadata is not None else None
    return value if isinstance(value, str) else None


def _request_id(stream: Stream[Request, Response]) -> str:
    """The client's x-request-id if it sent a sensible one, else a new one."""
    offered = _metadata(stream, "x-request-id")
    # Only characters that cannot pass for another field of the log line.
    if offered and len(offered) <= 64 and _REQUEST_ID.fullmatch(offered):
        return offered
    return uuid.uuid4().hex[:16]


def _peer(stream: Stream[Request, Response]) -> str:
    address = stream.peer.addr()
    if address is None:
        return "-"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _abandon(job: object, work: asyncio.Future[Any]) -> None:
    """Nobody waits for ``job`` any more: withdraw it, or log how it ends."""
    work.cancel()
    # cancel() fails only for a job already running in its thread.
    if isinstance(job, concurrent.futures.Future) and not job.cancel():
        job.add_done_callback(_log_unobserved_failure)


def _log_unobserved_failure(work: asyncio.Future[Any] | concurrent.futures.Future[Any]) -> None:
    if work.cancelled():
        return
    failure = work.exception()
    if isinstance(failure, ModelFailure):
        log.error("%s (its caller had already gone)", failure, exc_info=failure.__cause__)


def _check_encodable(response: Response, name: str) -> None:
    """Encode once in the worker: a field of the wrong type must fail here, as INTERNAL."""
    try:
        bytes(response)
    except Exception as exc:
        raise ModelFailure(
            f"model {name} returned a Response that cannot be encoded: {type(exc).__name__}"
        ) from exc


def _describe(value: object) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return f"a {type(value).__name__}"


def _to_full_size_if_reduced(response: Response, decoded: Decoded) -> None:
    if decoded.scale_x != 1.0 or decoded.scale_y != 1.0:
        to_full_size(response, decoded)


def to_full_size(response: Response, decoded: Decoded) -> None:
    """Scale the boxes a model found in a reduced decode to the full image, in place."""
    width, height = decoded.size
    for result in response.response:
        box = result.bbox
        if box is None:
            continue
        box.x1 = min(box.x1 * decoded.scale_x, width)
        box.x2 = min(box.x2 * decoded.scale_x, width)
        box.y1 = min(box.y1 * decoded.scale_y, height)
        box.y2 = min(box.y2 * decoded.scale_y, height)
