"""The blocking client: emotion.Client's own calls, run on an event loop of its own.

For scripts, notebooks and thread-based programs. Each call is the async
Client's, run on a private loop in a daemon thread, so the retries, resumed
streams, deadlines and tracing are the same code, not a copy, and calls from
many threads share one connection. A loop in a thread of its own, not
``asyncio.run`` per call, is what lets it work where a loop already runs in
the calling thread (Jupyter) and keep its connection between calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar

from emotion.client.client import DEFAULT_CONNECTIONS, DEFAULT_RETRY, Client
from emotion.config import DEFAULT_TARGET, ClientTls
from emotion.config.client import ConnectionPolicy, RetryPolicy
from emotion.contract import DescribeResponse, Options, Response
from emotion.observability.tracing import Tracer

T = TypeVar("T")

#: What a stream's loop side tells the thread that iterates it.
_Kind = Literal["pull", "answer", "end", "error", "cancelled"]
_Events = queue.SimpleQueue[tuple[_Kind, Any]]


class SyncClient:
    """emotion.Client with blocking calls; use ``with`` (or close()) to end its thread.

    Takes the same arguments as :class:`emotion.Client` and keeps the same
    promises: calls that fail for a reason a new try can mend are tried again
    within their one deadline, a stream goes on over a new call, and
    ``retry=None`` shows every error. Safe to share between threads: their
    calls run at once, over the client's connections. The caller's OpenTelemetry trace
    goes with each call from the thread that makes it.

    A KeyboardInterrupt (or any exception from a signal handler) while a call
    waits cancels the call on the server too. close() ends the calls still
    running (they raise RuntimeError), closes the connection and joins the
    thread; a call after it raises RuntimeError. From async code, use
    :class:`emotion.Client`: a call here blocks the calling thread's loop.
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
        self._closed = False
        self._lock = threading.Lock()
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=_run, args=(loop,), name=f"emotion.SyncClient({target})", daemon=True
        )
        self._loop, self._thread = loop, thread
        thread.start()

        async def make() -> Client:  # on the loop: a grpclib Channel binds the loop it is made on
            return Client(
                target,
                timeout=timeout,
                tls=tls,
                token=token,
                max_image_size=max_image_size,
                tracing=tracing,
                retry=retry,
                connections=connections,
            )

        try:
            self._client = asyncio.run_coroutine_threadsafe(make(), loop).result()
        except BaseException:
            _shut(loop, thread, None)
            raise
        # Closed when garbage or at exit if never closed: no thread or socket left behind.
        self._finalizer = weakref.finalize(self, _shut, loop, thread, self._client)

    @property
    def target(self) -> str:
        return self._client.target

    @property
    def timeout(self) -> float | None:
        return self._client.timeout

    @property
    def max_image_size(self) -> int:
        return self._client.max_image_size

    @property
    def retry(self) -> RetryPolicy | None:
        return self._client.retry

    def predict(
        self, image: bytes, *, timeout: float | None = None, options: Options | None = None
    ) -> Response:
        """Run the pipeline on the bytes of one image file; the answer, once it comes."""
        return self._call(lambda: self._client.predict(image, timeout=timeout, options=options))

    def describe(self, *, timeout: float | None = None) -> DescribeResponse:
        """What the server serves and accepts: see :meth:`emotion.Client.describe`."""
        return self._call(lambda: self._client.describe(timeout=timeout))

    def stream(
        self,
        images: Iterable[bytes],
        *,
        timeout: float | None = None,
        options: Options | None = None,
    ) -> Iterator[Response]:
        """Run the pipeline on many images over one call: one Response per image, in order.

        As :meth:`emotion.Client.stream`: each answer once, in order, across
        cut calls, and ``images`` asked for each image once. ``images`` is read
        in the thread that iterates the answers, while it waits for one, never
        in the client's thread: an iterator tied to its thread (a camera, a
        database cursor) works, and a slow read holds up no other call.
        Leaving the loop early cancels the call. Every image is sent with ``options``.
        """
        self._check_open()
        return self._answers(iter(images), timeout, options)

    def close(self) -> None:
        """End the calls still running, close the connection, stop and join the thread."""
        with self._lock:
            self._closed = True
        self._finalizer()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _answers(
        self, images: Iterator[bytes], timeout: float | None, options: Options | None
    ) -> Iterator[Response]:
        events: _Events = queue.SimpleQueue()
        future = self._submit(lambda: _relay(self._client, events, timeout, options))
        try:
            while True:
                kind, value = events.get()
                if kind == "pull":
                    self._give(value, images)
                elif kind == "answer":
                    yield value
                elif kind == "error":
                    raise value
                elif kind == "cancelled":
                    raise self._closed_error()
                else:
                    return
        finally:
            future.cancel()  # a caller that left early, or was interrupted, ends the call

    def _give(self, wanted: asyncio.Future[bytes], images: Iterator[bytes]) -> None:
        """Read the next image here, in the caller's thread, and hand it to the loop."""
        try:
            image = next(images)
        except StopIteration:
            self._settle(wanted, None, StopAsyncIteration())
        except Exception as exc:  # the stream raises it after the answers before it
            self._settle(wanted, None, exc)
        else:
            self._settle(wanted, image, None)

    def _settle(
        self, wanted: asyncio.Future[bytes], image: bytes | None, exc: Exception | None
    ) -> None:
        try:
            self._loop.call_soon_threadsafe(_settle, wanted, image, exc)
        except RuntimeError:  # the loop is closed: the stream hears it as "cancelled"
            if not self._closed:
                raise

    def _call(self, start: Callable[[], Coroutine[Any, Any, T]]) -> T:
        future = self._submit(start)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if self._closed:
                raise self._closed_error() from None
            raise
        except BaseException:
            future.cancel()  # interrupted while waiting: end the call, not just the wait
            raise

    def _submit(self, start: Callable[[], Coroutine[Any, Any, T]]) -> concurrent.futures.Future[T]:
        # Under the lock: a call either runs before close() ends the calls, or is refused.
        with self._lock:
            self._check_open()
            # The task is made in this thread's context: the caller's trace goes with it.
            return asyncio.run_coroutine_threadsafe(start(), self._loop)

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()
        if threading.current_thread() is self._thread:
            raise RuntimeError("a SyncClient cannot wait for itself on its own thread")

    def _closed_error(self) -> RuntimeError:
        return RuntimeError(f"this SyncClient (to {self.target}) is closed")


def _run(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


def _shut(loop: asyncio.AbstractEventLoop, thread: threading.Thread, client: Client | None) -> None:
    """Cancel the calls, close the connection, stop the loop and join its thread."""

    async def wind_down() -> None:
        # The calls first: one whose connection closed under it would try again.
        running = asyncio.all_tasks() - {asyncio.current_task()}
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if client is not None:
            client.close()
            # The socket closes on the loop's next pass: stopped before it,
            # the connection would stay open (a server draining waits on it).
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        await loop.shutdown_asyncgens()
        await loop.shutdown_default_executor()  # the threads that resolved host names
        loop.stop()

    if not thread.is_alive():
        return
    if threading.current_thread() is thread:  # dropped on its own loop: it cannot wait for itself
        loop.create_task(wind_down())
        return
    asyncio.run_coroutine_threadsafe(wind_down(), loop)
    thread.join()


async def _relay(
    client: Client, events: _Events, timeout: float | None, options: Options | None
) -> None:
    """The async stream, on the loop: its pulls and answers go to the caller's thread."""
    try:
        async for answer in client.stream(_Pulls(events), timeout=timeout, options=options):
            events.put(("answer", answer))
    except asyncio.CancelledError:
        events.put(("cancelled", None))
        raise
    except Exception as exc:
        events.put(("error", exc))
    else:
        events.put(("end", None))


class _Pulls:
    """The caller's images as an async iterator: each asked of the caller's thread."""

    def __init__(self, events: _Events) -> None:
        self._events = events

    def __aiter__(self) -> _Pulls:
        return self

    async def __anext__(self) -> bytes:
        wanted: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._events.put(("pull", wanted))
        return await wanted  # StopAsyncIteration once the caller's images end


def _settle(wanted: asyncio.Future[bytes], image: bytes | None, exc: Exception | None) -> None:
    if wanted.done():  # the stream was cancelled meanwhile
        return
    if exc is not None:
        wanted.set_exception(exc)
    else:
        assert image is not None
        wanted.set_result(image)
