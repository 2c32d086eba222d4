"""Micro-batching: concurrent calls run as one process_batch, each gets its own answer."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import StartServer, encode, gradient
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from PIL import Image
from support.sample_models import BatchModel

from emotion import BBox, PipelineStub, Request, Response, Server
from emotion.contract import Options
from emotion.inference.batching import Batcher
from emotion.inference.threads import DeadlinePassed, InferenceQueue, QueueFull


def images(count: int) -> list[bytes]:
    """JPEGs of distinct widths, so each answer shows which image it was for."""
    return [encode(gradient(100 + 10 * i, 80), "JPEG") for i in range(count)]


async def call_all(stub: PipelineStub, payloads: list[bytes]) -> list[float]:
    answers = await asyncio.gather(
        *(stub.run_pipeline(Request(image=p), timeout=10) for p in payloads)
    )
    widths = []
    for answer in answers:
        assert answer.response[0].bbox is not None
        widths.append(answer.response[0].bbox.x2)
    return widths


async def test_concurrent_calls_share_batches_and_each_gets_its_own_answer(
    start_server: StartServer, connect: Callable[[Server], Channel]
) -> None:
    model = BatchModel()
    server = await start_server(model, max_batch_size=4, max_batch_delay=0.5)
    stub = PipelineStub(connect(server))

    widths = await call_all(stub, images(6))

    assert widths == [100 + 10 * i for i in range(6)]
    assert sorted(model.batches) == [2, 4]


async def test_batching_is_off_by_default(
    start_server: StartServer, connect: Callable[[Server], Channel]
) -> None:
    model = BatchModel()
    stub = PipelineStub(connect(await start_server(model)))

    await call_all(stub, images(4))

    assert model.batches == []


async def test_a_lone_call_waits_no_longer_than_the_delay(
    start_server: StartServer, connect: Callable[[Server], Channel]
) -> None:
    model = BatchModel()
    server = await start_server(model, max_batch_size=8, max_batch_delay=0.05)

    widths = await call_all(PipelineStub(connect(server)), images(1))

    assert widths == [100]
    assert model.batches == [1]


async def test_boxes_from_reduced_decodes_are_scaled_per_call_in_a_batch(
    start_server: StartServer, connect: Callable[[Server], Channel]
) -> None:
    model = BatchModel()
    server = await start_server(model, max_batch_size=2, max_batch_delay=0.5)
    stub = PipelineStub(connect(server))
    big, small = encode(gradient(4000, 3000), "JPEG"), encode(gradient(120, 90), "JPEG")

    answers = await asyncio.gather(
        stub.run_pipeline(Request(image=big), timeout=10),
        stub.run_pipeline(Request(image=small), timeout=10),
    )

    assert model.batches == [2]
    assert answers[0].response[0].bbox == BBox(x1=0, y1=0, x2=4000, y2=3000)
    assert answers[1].response[0].bbox == BBox(x1=0, y1=0, x2=120, y2=90)


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("raise", "model BatchModel failed: MemoryError"),
        (
            "short",
            "model BatchModel.process_batch returned a list of 2 for 3 images, "
            "not a list of as many emotion.v1.Response",
        ),
    ],
)
async def test_a_failing_batch_fails_each_of_its_calls_with_internal(
    start_server: StartServer, connect: Callable[[Server], Channel], broken: str, message: str
) -> None:
    model = BatchModel()
    model.broken = broken
    server = await start_server(model, max_batch_size=3, max_batch_delay=0.5)
    stub = PipelineStub(connect(server))

    outcomes = await asyncio.gather(
        *(stub.run_pipeline(Request(image=p), timeout=10) for p in images(3)),
        return_exceptions=True,
    )

    assert all(isinstance(o, GRPCError) for o in outcomes)
    assert {(o.status, o.message) for o in outcomes if isinstance(o, GRPCError)} == {
        (Status.INTERNAL, message)
    }


def test_a_batch_needs_room_for_two() -> None:
    with pytest.raises(ValueError, match="at least two"):
        Batcher(
            lambda images, options: [],
            InferenceQueue(ThreadPoolExecutor(1), capacity=1),
            max_size=1,
            max_delay=0.0,
        )


async def test_a_batch_is_a_job_of_the_queue_whose_late_images_are_left_out() -> None:
    executor = ThreadPoolExecutor(1)
    inference = InferenceQueue(executor, capacity=3)
    seen: list[list[int]] = []
    busy = threading.Event()
    executor.submit(busy.wait, 10)  # the only thread is taken until the test says

    def run(batch: Sequence[Image.Image], options: Sequence[Options | None]) -> list[Response]:
        seen.append([image.width for image in batch])
        return [Response() for _ in batch]

    batcher = Batcher(run, inference, max_size=2, max_delay=10)
    late = asyncio.ensure_future(
        batcher.submit(Image.new("L", (1, 1)), deadline=time.monotonic() + 0.05)
    )
    patient = asyncio.ensure_future(batcher.submit(Image.new("L", (2, 1)), deadline=None))
    await asyncio.sleep(0.1)
    busy.set()

    with pytest.raises(DeadlinePassed):
        await late
    assert await patient == Response()
    assert seen == [[2]]
    executor.shutdown()


async def test_a_batch_counts_each_of_its_images_against_the_queue() -> None:
    executor = ThreadPoolExecutor(1)
    batcher = Batcher(
        lambda batch, options: [Response() for _ in batch],
        InferenceQueue(executor, capacity=1),
        max_size=2,
        max_delay=10,
    )

    outcomes = await asyncio.gather(
        *(batcher.submit(Image.new("L", (1, 1))) for _ in range(2)), return_exceptions=True
    )

    assert [type(outcome) for outcome in outcomes] == [QueueFull, QueueFull]
    executor.shutdown()


async def test_a_batch_whose_callers_all_left_is_withdrawn_and_never_runs() -> None:
    executor = ThreadPoolExecutor(1)
    inference = InferenceQueue(executor, capacity=4)
    ran: list[int] = []
    busy = threading.Event()
    executor.submit(busy.wait, 10)  # the only thread is taken until the test says

    def run(batch: Sequence[Image.Image], options: Sequence[Options | None]) -> list[Response]:
        ran.append(len(batch))
        return [Response() for _ in batch]

    batcher = Batcher(run, inference, max_size=2, max_delay=10)
    callers = [asyncio.ensure_future(batcher.submit(Image.new("L", (1, 1)))) for _ in range(2)]
    await asyncio.sleep(0.05)
    assert inference.queued == 2

    for caller in callers:
        caller.cancel()
    await asyncio.sleep(0.05)
    queued_after_leaving = inference.queued
    busy.set()
    await asyncio.sleep(0.1)

    assert queued_after_leaving == 0
    assert ran == []
    executor.shutdown()
