"""emotion.Client across the ordinary events of a deployment: real servers, real calls.

A scripted server (support.scripted) fails calls as a test says; the others
are emotion's own, in-process or as `emotion serve` with workers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest
from conftest import StartServer, encode, gradient
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from support.sample_models import SizeModel
from support.scripted import QUICK, Scripted, serve_scripted
from support.served import serving_workers, start_serving

from emotion import Client, Response, Result, RetryPolicy, Server, ServerConfig
from emotion.config import ConnectionAge
from emotion.serving.admission import State


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[Scripted, str]]:
    async with serve_scripted() as found:
        yield found


async def test_unavailable_is_retried_until_the_server_answers_unless_retries_are_off(
    scripted: tuple[Scripted, str], jpeg: bytes
) -> None:
    service, target = scripted
    service.failures = [(Status.UNAVAILABLE, None)] * 2
    async with Client(target, timeout=10, retry=QUICK) as client:
        answer = await client.predict(jpeg)
    retried = len(service.tries)

    service.tries.clear()
    service.failures = [(Status.UNAVAILABLE, None)] * 2
    async with Client(target, timeout=10, retry=None) as client:
        with pytest.raises(GRPCError) as caught:
            await client.predict(jpeg)

    assert answer.response == [Result()]
    assert retried == 3
    assert caught.value.status is Status.UNAVAILABLE
    assert len(service.tries) == 1


async def test_a_call_cut_by_closing_the_client_raises_and_is_not_tried_again(
    scripted: tuple[Scripted, str], jpeg: bytes
) -> None:
    service, target = scripted
    service.delay = 30
    client = Client(target, timeout=60, retry=QUICK)
    call = asyncio.ensure_future(client.predict(jpeg))
    while not service.tries:  # noqa: ASYNC110 - a count to watch, not an event
        await asyncio.sleep(0.01)

    client.close()
    with pytest.raises(Exception):  # noqa: B017, PT011 - however grpclib words the cut
        await asyncio.wait_for(call, 5)
    await asyncio.sleep(0.2)  # a retry would have arrived by now

    assert len(service.tries) == 1


async def test_the_server_s_pushback_is_waited_and_a_negative_one_is_not_retried(
    scripted: tuple[Scripted, str], jpeg: bytes
) -> None:
    service, target = scripted
    service.failures = [(Status.RESOURCE_EXHAUSTED, "400")]
    async with Client(target, timeout=10, retry=QUICK) as client:
        await client.predict(jpeg)
        waited = service.tries[1] - service.tries[0]
        service.tries.clear()
        service.failures = [(Status.RESOURCE_EXHAUSTED, "-1")]
        with pytest.raises(GRPCError) as caught:
            await client.predict(jpeg)

    assert 0.4 <= waited < 0.4 + 0.3  # not QUICK's 10 ms backoff
    assert caught.value.status is Status.RESOURCE_EXHAUSTED
    assert len(service.tries) == 1


async def test_retrying_never_extends_the_deadline(
    scripted: tuple[Scripted, str], jpeg: bytes
) -> None:
    service, target = scripted
    service.always = (Status.UNAVAILABLE, "2000")  # come back in 2 s
    service.delay = 0.1
    async with Client(target, retry=QUICK) as client:
        started = time.monotonic()
        with pytest.raises((GRPCError, TimeoutError)):
            await client.predict(jpeg, timeout=0.6)
        took = time.monotonic() - started

    # A retry 2 s later would end past the deadline: the call fails by it, not 2 s later.
    assert took < 0.6 + 0.25
    assert len(service.tries) == 1


async def test_the_retry_budget_stops_retries_after_an_outage(
    scripted: tuple[Scripted, str], jpeg: bytes
) -> None:
    service, target = scripted
    service.always = (Status.UNAVAILABLE, None)
    budget = RetryPolicy(initial_backoff=0.01, max_backoff=0.01, max_tokens=6, token_ratio=1.0)
    tries = []
    async with Client(target, timeout=10, retry=budget) as client:
        for _ in range(4):
            with pytest.raises(GRPCError):
                await client.predict(jpeg)
            tries.append(len(service.tries))
            service.tries.clear()
        service.always = None
        for _ in range(5):
            await client.predict(jpeg)  # each success gives a token back
        service.tries.clear()
        service.failures = [(Status.UNAVAILABLE, None)]
        await client.predict(jpeg)

    # 6 tokens, a failure takes one, none retried at 3 or fewer: an outage
    # costs the server one try per call, not five.
    assert tries == [3, 1, 1, 1]
    assert len(service.tries) == 2  # successes brought the retries back


def widths(count: int) -> list[int]:
    return list(range(20, 20 + count))


class Camera:
    """An async feed of images of known widths, a frame every ``every`` seconds, counting pulls."""

    def __init__(self, count: int, every: float) -> None:
        self.images = [encode(gradient(width, 10), "PNG") for width in widths(count)]
        self.every = every
        self.pulled = 0

    async def frames(self) -> AsyncIterator[bytes]:
        for image in self.images:
            self.pulled += 1
            yield image
            await asyncio.sleep(self.every)


async def collect(answers: AsyncIterator[Response], into: list[Response]) -> None:
    async for answer in answers:
        into.append(answer)


def answered_widths(answers: list[Response]) -> list[int]:
    return [int(a.response[0].bbox.x2) for a in answers if a.response[0].bbox is not None]


async def test_a_stream_goes_on_across_connection_ages_every_answer_once_in_order(
    start_server: StartServer,
) -> None:
    server = await start_server(SizeModel(), max_connection_age=ConnectionAge(1.0, grace=5))
    camera = Camera(25, every=0.1)

    async with Client(f"127.0.0.1:{server.port}", timeout=30) as client:
        answers = [answer async for answer in client.stream(camera.frames())]

    assert answered_widths(answers) == widths(25)
    assert camera.pulled == 25
    assert server.connections_accepted >= 2  # it did cross an age


async def test_a_drain_ends_a_stream_after_the_images_it_took_and_a_restart_takes_the_rest(
    start_server: StartServer,
) -> None:
    first = await start_server(SizeModel(), grace=30)
    second = Server(SizeModel(), ServerConfig(port=first.port))  # the same port, at once
    camera = Camera(20, every=0.05)
    answers: list[Response] = []

    async def restart() -> float:
        while len(answers) < 5:  # noqa: ASYNC110 - a count to watch, not an event
            await asyncio.sleep(0.01)
        started = time.monotonic()
        stopping = asyncio.ensure_future(first.stop())
        while first.admission.state is not State.DRAINING:  # noqa: ASYNC110 - and not listening
            await asyncio.sleep(0)
        await second.start()
        await stopping
        return time.monotonic() - started

    try:
        async with Client(f"127.0.0.1:{first.port}", timeout=30) as client:
            restarting = asyncio.ensure_future(restart())
            await collect(client.stream(camera.frames()), answers)
            took = await restarting
    finally:
        await second.stop(grace=0)

    assert answered_widths(answers) == widths(20)
    assert camera.pulled == 20
    assert took < 5  # the drain did not wait out the grace for the stream


@pytest.mark.subprocess
async def test_a_worker_killed_under_load_fails_no_call(jpeg: bytes) -> None:
    served = await start_serving(
        "--port", "0", "--workers", "2", "--inference-processes", "1",
        "--model", "emotion.models.mock:MockModel",
    )  # fmt: skip
    failures: list[BaseException] = []
    answered_after_the_kill = 0
    killed = asyncio.Event()
    stop = asyncio.Event()

    async def caller(client: Client) -> None:
        nonlocal answered_after_the_kill
        while not stop.is_set():
            try:
                await client.predict(jpeg)
            except Exception as exc:
                failures.append(exc)
            else:
                answered_after_the_kill += killed.is_set()

    try:
        async with Client(f"127.0.0.1:{served.port}", timeout=5) as client:
            callers = [asyncio.ensure_future(caller(client)) for _ in range(4)]
            await asyncio.sleep(1.5)
            worker = min(serving_workers(served.process.pid, served.port))  # one it is on
            os.kill(worker, signal.SIGKILL)
            killed.set()
            await asyncio.sleep(2)
            stop.set()
            await asyncio.gather(*callers)
    finally:
        served.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(served.process.wait(), 30)

    assert failures == []
    assert answered_after_the_kill > 0
