"""The callers faults.py puts through a deployment's events: emotion's clients and grpcio.

Each is a session on one server address: calls in a closed loop from several
callers, one call, or a stream of frames. Which exist depends on the emotion
code imported (the "before" code has no ``retry=`` and no SyncClient), so
:func:`available` says which can run.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

import emotion
from emotion import Request, Response
from emotion.contract import RUN_PIPELINE_PATH, STREAM_PIPELINE_PATH

T = TypeVar("T")

#: A caller's pause after a failed call: a loop that fails fast would otherwise spin.
PAUSE = 0.1

#: The service config of deploy/, beside the emotion code under test (absent before it existed).
SERVICE_CONFIG = (
    Path(emotion.__file__).resolve().parent.parent / "deploy" / "grpc-service-config.json"
)


@dataclass(frozen=True)
class Call:
    """One call: when it began and ended (time.monotonic), and how it failed, if it did."""

    start: float
    end: float
    error: str | None = None


@dataclass
class Streamed:
    """A stream's answers, as the frame numbers they answer, and the error that ended it."""

    frames: list[int] = field(default_factory=list)
    error: str | None = None


def failure(exc: BaseException) -> str:
    """A failed call, as a reader of the report wants it: the status, else the exception."""
    status = getattr(exc, "status", None)  # grpclib's GRPCError
    if status is not None:
        return f"{status.name}: {getattr(exc, 'message', '')}"
    if isinstance(exc, grpc.RpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


def frame_of(answer: Response) -> int:
    """The frame an answer is for: fault_model.FrameModel boxes the whole image, 1280 - n wide."""
    bbox = answer.response[0].bbox
    assert bbox is not None
    return 1280 - round(bbox.x2)


class Session:
    """One client of one server, kept across calls (its connection with it)."""

    name = ""

    async def call(self, image: bytes) -> str | None:
        """One call: None if answered, else how it failed."""
        raise NotImplementedError

    async def load(self, image: bytes, callers: int, until: float) -> list[Call]:
        """``callers`` calling one call after another until ``until`` (time.monotonic)."""
        calls: list[Call] = []

        async def caller() -> None:
            while (start := time.monotonic()) < until:
                error = await self.call(image)
                calls.append(Call(start, time.monotonic(), error))
                if error is not None:
                    await asyncio.sleep(PAUSE)

        await asyncio.gather(*(caller() for _ in range(callers)))
        return calls

    async def stream(self, frames: list[bytes], every: float) -> Streamed:
        """One StreamPipeline call sending a frame every ``every`` seconds."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


async def paced(frames: list[bytes], every: float) -> AsyncIterator[bytes]:
    for number, frame in enumerate(frames):
        if number:
            await asyncio.sleep(every)
        yield frame


class EmotionClient(Session):
    """emotion.Client: with its defaults, or with ``retry=None``."""

    def __init__(self, target: str, timeout: float, stream_timeout: float, **options: Any) -> None:
        self.client = emotion.Client(target, timeout=timeout, **options)
        self.stream_timeout = stream_timeout

    async def call(self, image: bytes) -> str | None:
        try:
            await self.client.predict(image)
        except Exception as exc:
            return failure(exc)
        return None

    async def stream(self, frames: list[bytes], every: float) -> Streamed:
        result = Streamed()
        try:
            async for answer in self.client.stream(
                paced(frames, every), timeout=self.stream_timeout
            ):
                result.frames.append(frame_of(answer))
        except Exception as exc:
            result.error = failure(exc)
        return result

    async def close(self) -> None:
        self.client.close()
        await asyncio.sleep(0)  # the socket closes on the loop's next pass


class SyncEmotionClient(Session):
    """emotion.SyncClient shared by threads, one per caller, as docs/client.md shows."""

    name = "emotion.SyncClient"

    def __init__(self, target: str, timeout: float, stream_timeout: float) -> None:
        self.client = emotion.SyncClient(target, timeout=timeout)
        self.stream_timeout = stream_timeout

    def _call(self, image: bytes) -> str | None:
        try:
            self.client.predict(image)
        except Exception as exc:
            return failure(exc)
        return None

    async def call(self, image: bytes) -> str | None:
        return await _in_thread(lambda: self._call(image))

    async def load(self, image: bytes, callers: int, until: float) -> list[Call]:
        calls: list[Call] = []
        lock = threading.Lock()

        def caller() -> None:
            while (start := time.monotonic()) < until:
                error = self._call(image)
                with lock:
                    calls.append(Call(start, time.monotonic(), error))
                if error is not None:
                    time.sleep(PAUSE)

        with ThreadPoolExecutor(callers) as threads:
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(threads, caller) for _ in range(callers)))
        return calls

    async def stream(self, frames: list[bytes], every: float) -> Streamed:
        def paced_frames() -> Iterator[bytes]:
            for number, frame in enumerate(frames):
                if number:
                    time.sleep(every)
                yield frame

        def run() -> Streamed:
            result = Streamed()
            try:
                for answer in self.client.stream(paced_frames(), timeout=self.stream_timeout):
                    result.frames.append(frame_of(answer))
            except Exception as exc:
                result.error = failure(exc)
            return result

        return await _in_thread(run)

    async def close(self) -> None:
        await _in_thread(self.client.close)


class Grpcio(Session):
    """grpc.aio on one channel, with deploy/'s service config or with none."""

    def __init__(
        self, target: str, timeout: float, stream_timeout: float, service_config: bool
    ) -> None:
        options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        if service_config:
            options.append(("grpc.service_config", SERVICE_CONFIG.read_text()))
        self.channel = grpc.aio.insecure_channel(target, options=options)
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        self.unary = self.channel.unary_unary(
            RUN_PIPELINE_PATH, request_serializer=bytes, response_deserializer=Response.parse
        )
        self.streaming = self.channel.stream_stream(
            STREAM_PIPELINE_PATH, request_serializer=bytes, response_deserializer=Response.parse
        )

    async def call(self, image: bytes) -> str | None:
        try:
            await self.unary(Request(image=image), timeout=self.timeout)
        except grpc.RpcError as exc:
            return failure(exc)
        return None

    async def stream(self, frames: list[bytes], every: float) -> Streamed:
        async def requests() -> AsyncIterator[Request]:
            async for frame in paced(frames, every):
                yield Request(image=frame)

        result = Streamed()
        try:
            async for answer in self.streaming(requests(), timeout=self.stream_timeout):
                result.frames.append(frame_of(answer))
        except grpc.RpcError as exc:
            result.error = failure(exc)
        return result

    async def close(self) -> None:
        await self.channel.close()


async def _in_thread(function: Callable[[], T]) -> T:
    """Run a blocking call in a thread of its own (the default pool has few on 2 CPUs)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            value = function()
        except BaseException as exc:
            loop.call_soon_threadsafe(_fail, done, exc)
        else:
            loop.call_soon_threadsafe(_resolve, done, value)

    threading.Thread(target=run, daemon=True).start()
    return await done


def _resolve(done: asyncio.Future[T], value: T) -> None:
    if not done.cancelled():
        done.set_result(value)


def _fail(done: asyncio.Future[T], exc: BaseException) -> None:
    if not done.cancelled():
        done.set_exception(exc)


Maker = Callable[[str, float, float], Session]


def _named(name: str, make: Callable[[str, float, float], Session]) -> Maker:
    def made(target: str, timeout: float, stream_timeout: float) -> Session:
        session = make(target, timeout, stream_timeout)
        session.name = name
        return session

    return made


def available() -> dict[str, Maker]:
    """The callers this emotion code has, by the name the report gives them."""
    retry = "retry" in inspect.signature(emotion.Client).parameters
    config = SERVICE_CONFIG.exists()
    makers: dict[str, Maker] = {
        "emotion.Client": _named("emotion.Client", EmotionClient),
    }
    if retry:
        makers["emotion.Client(retry=None)"] = _named(
            "emotion.Client(retry=None)", lambda t, d, s: EmotionClient(t, d, s, retry=None)
        )
    if hasattr(emotion, "SyncClient"):
        makers["emotion.SyncClient"] = _named("emotion.SyncClient", SyncEmotionClient)
    if config:
        makers["grpcio, service config"] = _named(
            "grpcio, service config", lambda t, d, s: Grpcio(t, d, s, service_config=True)
        )
    makers["grpcio, no service config"] = _named(
        "grpcio, no service config", lambda t, d, s: Grpcio(t, d, s, service_config=False)
    )
    return makers


def default_names(makers: dict[str, Maker]) -> list[str]:
    """What a run covers unless told: plain grpcio only where deploy/ has no service config."""
    if "grpcio, service config" in makers:
        return [name for name in makers if name != "grpcio, no service config"]
    return list(makers)
