"""`emotion.v1.Pipeline` on grpclib: decode and inference off the event loop."""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpclib.const
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.server import Stream
from PIL import Image

from emotion.batching import Batcher
from emotion.contract import (
    LEGACY_RUN_PIPELINE_PATH,
    RUN_PIPELINE_PATH,
    PipelineBase,
    Request,
    Response,
)
from emotion.decode import Decoded, InvalidImage, decode
from emotion.model import Model

T = TypeVar("T")
U = TypeVar("U")

log = logging.getLogger(__name__)


class State(enum.Enum):
    LOADING = "loading"
    SERVING = "serving"
    DRAINING = "draining"


class ModelFailure(Exception):
    """The model raised, or broke its contract; the message is safe for clients."""


class PipelineService(PipelineBase):
    """Serves one model instance.

    Decoding and ``process_sample`` are CPU-bound, so each call runs them
    together in ``executor``: the event loop stays free for health checks,
    cancellations and other calls however slow one image is.
    """

    def __init__(
        self,
        model: Model,
        executor: Executor,
        *,
        max_batch_size: int = 1,
        max_batch_delay: float = 0.0,
    ) -> None:
        self._model = model
        self._executor = executor
        self._batcher = None
        if max_batch_size > 1:
            self._batcher = Batcher(
                self._run_batch, executor, max_size=max_batch_size, max_delay=max_batch_delay
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

    async def run_pipeline(self, message: Request) -> Response:
        """Decode and infer; every failure is a GRPCError with the status a client needs."""
        loop = asyncio.get_running_loop()
        if self._batcher is None:
            return await self._outcome(
                loop.run_in_executor(
                    self._executor, self._counted, self._decode_and_run, message.image
                )
            )
        decoded = await self._outcome(
            loop.run_in_executor(self._executor, self._counted, self._decode, message.image)
        )
        response = await self._outcome(asyncio.ensure_future(self._batcher.submit(decoded.image)))
        _to_full_size_if_reduced(response, decoded)
        return response

    async def _outcome(self, work: asyncio.Future[T]) -> T:
        """The result of ``work``, unless the server aborts first; errors as GRPCError."""
        try:
            await asyncio.wait((work, self._abort_signal()), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # The client left (cancelled, deadline): the thread runs on unobserved.
            work.add_done_callback(_log_unobserved_failure)
            raise
        if not work.done():
            work.add_done_callback(_log_unobserved_failure)
            raise GRPCError(Status.UNAVAILABLE, "server shut down before the call finished; retry")
        try:
            return work.result()
        except InvalidImage as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
        except ModelFailure as exc:
            log.error("%s", exc, exc_info=exc.__cause__)
            raise GRPCError(Status.INTERNAL, str(exc)) from None

    def _admit(self) -> None:
        if self._state is State.LOADING:
            raise GRPCError(Status.UNAVAILABLE, "model is still loading; retry shortly")
        if self._state is State.DRAINING:
            raise GRPCError(Status.UNAVAILABLE, "server is shutting down; retry on another")

    async def _handle_run_pipeline(self, stream: Stream[Request, Response]) -> None:
        # A call counts as running from its headers until its trailers are
        # written: a drain lets it finish even if its body is still arriving,
        # and never closes a connection under an answer.
        self._active_calls += 1
        self._idle.clear()
        try:
            try:
                self._admit()
                request = await _receive(stream)
                response = await self.run_pipeline(request)
            except GRPCError as exc:
                await stream.send_trailing_metadata(status=exc.status, status_message=exc.message)
                return
            await stream.send_message(response)
            await stream.send_trailing_metadata()
        finally:
            self._active_calls -= 1
            if not self._active_calls:
                self._idle.set()

    def _abort_signal(self) -> asyncio.Future[None]:
        if self._abort is None:
            self._abort = asyncio.get_running_loop().create_future()
        return self._abort

    def _counted(self, step: Callable[[U], T], argument: U) -> T:
        """Run ``step`` in an inference thread, counted in :attr:`inferring`."""
        with self._inferring_lock:
            self._inferring += 1
        try:
            return step(argument)
        finally:
            with self._inferring_lock:
                self._inferring -= 1

    def _decode(self, data: bytes) -> Decoded:
        return decode(data, min_size=self._model.min_size)

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
        return responses

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        handler = grpclib.const.Handler(
            self._handle_run_pipeline,
            grpclib.const.Cardinality.UNARY_UNARY,
            Request,
            Response,
        )
        return {RUN_PIPELINE_PATH: handler, LEGACY_RUN_PIPELINE_PATH: handler}


async def _receive(stream: Stream[Request, Response]) -> Request:
    """The call's one request message, or INVALID_ARGUMENT saying what is wrong with it."""
    try:
        request = await stream.recv_message()
    except (GRPCError, StreamTerminatedError, ProtocolError):
        raise
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        raise GRPCError(
            Status.INVALID_ARGUMENT, f"request is not a valid emotion.v1.Request: {reason}"
        ) from None
    if request is None:
        raise GRPCError(Status.INVALID_ARGUMENT, "the call ended without a request message")
    return request


def _log_unobserved_failure(work: asyncio.Future[Any]) -> None:
    if work.cancelled():
        return
    failure = work.exception()
    if isinstance(failure, ModelFailure):
        log.error("%s (its caller had already gone)", failure, exc_info=failure.__cause__)


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
