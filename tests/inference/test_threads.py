"""The inference queue on its own: bounded, withdrawn, deadline-checked, abortable."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from emotion.inference.threads import Aborted, DeadlinePassed, InferenceQueue, QueueFull


class Gate:
    """A job that blocks its thread until the test opens the gate; counts what it ran."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.ran: list[str] = []

    def __call__(self, name: str) -> str:
        self.entered.set()
        if not self.opened.wait(10):
            raise TimeoutError("the test never opened the gate")
        self.ran.append(name)
        return name


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


async def test_a_job_runs_in_a_thread_and_returns_its_result(executor: ThreadPoolExecutor) -> None:
    inference = InferenceQueue(executor, capacity=2)
    caller = threading.get_ident()

    thread = await inference.run(lambda _: threading.get_ident(), None, deadline=None)

    assert thread != caller
    assert inference.queued == 0


async def test_the_queue_refuses_at_once_past_its_capacity(executor: ThreadPoolExecutor) -> None:
    inference = InferenceQueue(executor, capacity=2)
    gate = Gate()
    first = asyncio.ensure_future(inference.run(gate, "first", deadline=None))
    second = asyncio.ensure_future(inference.run(gate, "second", deadline=None))
    await asyncio.to_thread(gate.entered.wait, 10)

    with pytest.raises(QueueFull, match="server is busy: 2 images are waiting for the model"):
        await inference.run(gate, "third", deadline=None)
    with pytest.raises(QueueFull):
        await inference.run(gate, "a batch of two", deadline=None, weight=2)
    gate.opened.set()

    assert [await first, await second] == ["first", "second"]
    assert inference.queued == 0


async def test_a_cancelled_caller_withdraws_its_waiting_job(executor: ThreadPoolExecutor) -> None:
    inference = InferenceQueue(executor, capacity=3)
    gate = Gate()
    running = asyncio.ensure_future(inference.run(gate, "running", deadline=None))
    await asyncio.to_thread(gate.entered.wait, 10)
    waiting = asyncio.ensure_future(inference.run(gate, "withdrawn", deadline=None))
    await asyncio.sleep(0)

    waiting.cancel()
    await asyncio.sleep(0)
    gate.opened.set()
    await running

    assert gate.ran == ["running"]
    assert inference.queued == 0


async def test_a_job_whose_deadline_passed_in_the_queue_never_runs(
    executor: ThreadPoolExecutor,
) -> None:
    inference = InferenceQueue(executor, capacity=3)
    gate = Gate()
    running = asyncio.ensure_future(inference.run(gate, "running", deadline=None))
    await asyncio.to_thread(gate.entered.wait, 10)
    late = asyncio.ensure_future(inference.run(gate, "late", deadline=time.monotonic() + 0.05))

    await asyncio.sleep(0.1)
    gate.opened.set()

    with pytest.raises(DeadlinePassed, match="the deadline passed while the call waited"):
        await late
    await running
    assert gate.ran == ["running"]


async def test_abort_ends_every_waiting_caller_and_refuses_nothing_else(
    executor: ThreadPoolExecutor,
) -> None:
    inference = InferenceQueue(executor, capacity=3)
    gate = Gate()
    running = asyncio.ensure_future(inference.run(gate, "running", deadline=None))
    waiting = asyncio.ensure_future(inference.run(gate, "waiting", deadline=None))
    await asyncio.to_thread(gate.entered.wait, 10)

    inference.abort()

    for caller in (running, waiting):
        with pytest.raises(Aborted, match="server shut down before the call finished"):
            await caller
    assert inference.inferring == 1  # the running job finishes unobserved
    gate.opened.set()
    while inference.inferring:  # noqa: ASYNC110 - a count to watch, not an event
        await asyncio.sleep(0.01)
    assert gate.ran == ["running"]
