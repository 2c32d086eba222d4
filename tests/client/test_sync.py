"""emotion.SyncClient: the async Client's calls, blocking, from any thread; real servers.

The servers run on the test's loop, so the blocking calls run in other
threads, as a thread-based program makes them; where the calling thread must
be the main one (a KeyboardInterrupt, a loop already running), the server
runs on a loop in a thread of its own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from conftest import StartServer, encode, gradient
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from opentelemetry import trace
from support.sample_models import SizeModel
from support.scripted import Scripted, serve_scripted
from support.served import serving_workers, start_serving

from emotion import Client, Response, Server, ServerConfig, SyncClient
from emotion.config import ConnectionAge

T = TypeVar("T")


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[Scripted, str]]:
    async with serve_scripted() as found:
        yield found


@pytest.fixture
def scripted_elsewhere() -> Iterator[tuple[Scripted, str]]:
    """A Scripted server on a loop in another thread: the main thread is free to block."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(30)

    serving = serve_scripted()
    try:
        yield run(serving.__aenter__())
    finally:
        run(serving.__aexit__(None, None, None))
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def frames(widths: range, fail: bool = False) -> Iterator[bytes]:
    for width in widths:
        yield encode(gradient(width, 10), "PNG")
    if fail:
        raise OSError("the camera went away")


def widths_of(answers: list[Response]) -> list[float]:
    return [a.response[0].bbox.x2 for a in answers if a.response[0].bbox is not None]


async def test_its_answers_and_errors_are_the_async_client_s(
    start_server: StartServer, jpeg: bytes
) -> None:
    server = await start_server(SizeModel())
    target = f"127.0.0.1:{server.port}"
    async with Client(target, timeout=10) as client:
        expected = [
            await client.predict(jpeg),
            *[a async for a in client.stream(frames(range(20, 26)))],
        ]
        cut: list[Response] = []

        async def collect() -> None:
            async for answer in client.stream(frames(range(10, 12), fail=True)):
                cut.append(answer)

        with pytest.raises(OSError, match="the camera went away"):
            await collect()

    def blocking() -> tuple[list[Response], list[Response], BaseException]:
        with SyncClient(target, timeout=10) as client:
            answers = [client.predict(jpeg), *client.stream(frames(range(20, 26)))]
            cut: list[Response] = []
            with pytest.raises(OSError, match="the camera went away") as caught:
                cut.extend(client.stream(frames(range(10, 12), fail=True)))
        return answers, cut, caught.value

    answers, sync_cut, _ = await asyncio.to_thread(blocking)

    assert answers == expected
    assert widths_of(answers[1:]) == list(range(20, 26))
    assert sync_cut == cut  # the answers before the failure, then it
    assert len(cut) == 2


async def test_eight_threads_call_at_once_over_one_connection_each_with_its_trace(
    scripted: tuple[Scripted, str], jpeg: bytes
) -> None:
    service, target = scripted
    service.delay = 0.5

    def call(client: SyncClient, n: int) -> Response:
        span = trace.NonRecordingSpan(
            trace.SpanContext(n, 1000 + n, is_remote=False, trace_flags=trace.TraceFlags(1))
        )
        with trace.use_span(span):  # the calling thread's trace, carried to its loop
            return client.predict(jpeg)

    def calls() -> list[Response]:
        with SyncClient(target, timeout=10) as client, ThreadPoolExecutor(8) as pool:
            return list(pool.map(call, [client] * 8, range(1, 9)))

    started = time.monotonic()
    answers = await asyncio.to_thread(calls)
    took = time.monotonic() - started

    assert len(answers) == 8
    assert max(service.tries) - min(service.tries) < service.delay  # all 8 in flight together
    assert took < 2 * service.delay
    assert len(set(service.peers)) == 1  # one connection
    assert sorted(m["traceparent"] for m in service.metadata) == [
        f"00-{n:032x}-{1000 + n:016x}-01" for n in range(1, 9)
    ]


async def test_retries_are_on_by_default_and_retry_none_shows_the_error(
    scripted: tuple[Scripted, str], jpeg: bytes
) -> None:
    service, target = scripted

    def call(**options: Any) -> Response:
        service.failures = [(Status.UNAVAILABLE, None)] * 2
        with SyncClient(target, timeout=10, **options) as client:
            return client.predict(jpeg)

    await asyncio.to_thread(call)
    retried = len(service.tries)
    service.tries.clear()
    with pytest.raises(GRPCError) as caught:
        await asyncio.to_thread(call, retry=None)

    assert retried == 3
    assert caught.value.status is Status.UNAVAILABLE
    assert len(service.tries) == 1


def connections_to(port: int) -> int:
    """TCP connections of this machine established to ``port`` (IPv4), from /proc."""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if int(row[2].split(":")[1], 16) == port and row[3] == "01")


async def test_leaving_the_block_closes_the_connection_after_a_failed_call_too(
    scripted: tuple[Scripted, str], jpeg: bytes
) -> None:
    service, target = scripted
    service.always = (Status.UNAVAILABLE, None)

    def fail_and_leave() -> None:
        with SyncClient(target, timeout=10, retry=None) as client:
            client.predict(jpeg)

    with pytest.raises(GRPCError):
        await asyncio.to_thread(fail_and_leave)

    # Left open, the socket would wait for a garbage collection: a server
    # draining (asyncio's wait_closed, from Python 3.12) would wait with it.
    assert connections_to(int(target.rsplit(":", 1)[1])) == 0


async def test_a_stream_goes_on_across_connection_ages_reading_images_in_the_caller_s_thread(
    start_server: StartServer,
) -> None:
    server = await start_server(SizeModel(), max_connection_age=ConnectionAge(1.0, grace=5))
    pulled_in: list[int] = []

    def camera() -> Iterator[bytes]:
        for image in frames(range(20, 45)):
            pulled_in.append(threading.get_ident())
            time.sleep(0.1)  # a blocking read: it must hold up only this thread
            yield image

    def watch() -> tuple[list[Response], int]:
        with SyncClient(f"127.0.0.1:{server.port}", timeout=30) as client:
            return list(client.stream(camera())), threading.get_ident()

    answers, caller = await asyncio.to_thread(watch)

    assert widths_of(answers) == list(range(20, 45))  # every answer once, in order
    assert pulled_in == [caller] * 25  # each image asked for once, by the caller's thread
    assert server.connections_accepted >= 2  # it did cross an age


class Load:
    """Threads calling predict on one SyncClient until stopped, and what their calls met."""

    def __init__(self, client: SyncClient, image: bytes, threads: int = 4) -> None:
        self.failures: list[BaseException] = []
        self.answered = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._call, args=(client, image)) for _ in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _call(self, client: SyncClient, image: bytes) -> None:
        while not self._stop.is_set():
            try:
                client.predict(image)
            except Exception as exc:
                self.failures.append(exc)
            else:
                with self._lock:
                    self.answered += 1

    async def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            await asyncio.to_thread(thread.join)


@pytest.mark.subprocess
async def test_a_worker_killed_under_load_fails_no_call(jpeg: bytes) -> None:
    served = await start_serving(
        "--port", "0", "--workers", "2", "--inference-processes", "1",
        "--model", "emotion.models.mock:MockModel",
    )  # fmt: skip
    try:
        with SyncClient(served.target, timeout=5) as client:
            load = Load(client, jpeg)
            try:
                await asyncio.sleep(1.5)
                worker = min(serving_workers(served.process.pid, served.port))  # one it is on
                os.kill(worker, signal.SIGKILL)
                answered_before = load.answered
                await asyncio.sleep(2)
            finally:
                await load.stop()
    finally:
        await served.stop()

    assert load.failures == []
    assert load.answered > answered_before


async def test_a_server_stopped_and_started_again_on_its_port_fails_no_call(
    start_server: StartServer, jpeg: bytes
) -> None:
    first = await start_server(SizeModel())
    second = Server(SizeModel(), ServerConfig(port=first.port))
    try:
        with SyncClient(f"127.0.0.1:{first.port}", timeout=5) as client:
            load = Load(client, jpeg)
            try:
                await asyncio.sleep(0.5)
                await first.stop(grace=1)
                answered_before = load.answered
                await asyncio.sleep(0.5)  # refused meanwhile: the calls wait for it
                await second.start()
                await asyncio.sleep(1)
            finally:
                await load.stop()
    finally:
        await second.stop(grace=0)

    assert load.failures == []
    assert load.answered > answered_before


async def test_close_ends_the_calls_and_the_thread_and_a_call_after_it_says_closed(
    scripted: tuple[Scripted, str], jpeg: bytes
) -> None:
    service, target = scripted
    service.delay = 30

    def close_under_a_call() -> tuple[
        BaseException | None, set[threading.Thread], set[threading.Thread]
    ]:
        before = set(threading.enumerate())
        # localhost is resolved on the loop's executor: its threads must go too.
        client = SyncClient(target.replace("127.0.0.1", "localhost"), timeout=60)
        raised: list[BaseException] = []

        def call() -> None:
            try:
                client.predict(jpeg)
            except BaseException as exc:
                raised.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        while not service.tries:
            time.sleep(0.01)
        during = set(threading.enumerate()) - before - {caller}
        client.close()
        caller.join(10)
        left = set(threading.enumerate()) - before
        return (raised[0] if raised else None), during, left

    in_flight, started, left = await asyncio.to_thread(close_under_a_call)
    client = SyncClient(target)
    client.close()
    with pytest.raises(RuntimeError, match=r"this SyncClient \(to 127.0.0.1:\d+\) is closed"):
        client.predict(jpeg)
    with pytest.raises(RuntimeError, match="is closed"):
        client.stream([jpeg])

    port = target.rsplit(":", 1)[1]
    assert {t.name for t in started} == {f"emotion.SyncClient(localhost:{port})", "asyncio_0"}
    assert left == set()  # its loop's thread, and the threads that resolved localhost
    assert isinstance(in_flight, RuntimeError)
    assert "is closed" in str(in_flight)
    await asyncio.sleep(0.1)
    assert service.cancelled == 1  # the call in flight ended on the server too


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """SIGINT raising KeyboardInterrupt, as in a terminal.

    A run started in the background (``cmd &`` in a script) inherits SIGINT
    ignored, and Python then installs no handler for it.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c_raises")
def test_an_interrupted_call_is_cancelled_on_the_server(
    scripted_elsewhere: tuple[Scripted, str], jpeg: bytes
) -> None:
    service, target = scripted_elsewhere
    service.delay = 30

    def interrupt_once_sent() -> None:
        while not service.tries:
            time.sleep(0.01)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)  # Ctrl-C

    with SyncClient(target, timeout=60) as client:
        threading.Thread(target=interrupt_once_sent).start()
        with pytest.raises(KeyboardInterrupt):
            client.predict(jpeg)
        deadline = time.monotonic() + 5
        while not service.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        cancelled = service.cancelled
        service.delay = 0
        still = client.predict(jpeg)  # the client goes on working

    assert cancelled == 1
    assert still.response


async def test_it_works_where_a_loop_already_runs_in_the_calling_thread(
    scripted_elsewhere: tuple[Scripted, str], jpeg: bytes
) -> None:
    _, target = scripted_elsewhere
    asyncio.get_running_loop()  # as in a Jupyter notebook, where asyncio.run would refuse

    with SyncClient(target, timeout=10) as client:
        answer = client.predict(jpeg)

    assert answer.response
