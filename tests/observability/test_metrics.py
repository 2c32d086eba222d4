"""Prometheus metrics: what a scrape shows after real calls, for one process and for workers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from conftest import StartServer
from grpclib.client import Channel
from grpclib.exceptions import GRPCError
from support.sample_models import BatchModel
from support.scraping import scrape
from support.served import free_port, start_serving

from emotion import PipelineStub, Request, Server


def handled(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], code: str) -> float:
    key = (
        "grpc_server_handled_total",
        (
            ("grpc_code", code),
            ("grpc_method", "RunPipeline"),
            ("grpc_service", "emotion.v1.Pipeline"),
            ("grpc_type", "unary"),
        ),
    )
    return samples.get(key, 0.0)


async def test_a_scrape_counts_calls_by_status_and_times_them(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    server = await start_server(metrics_port=0)
    assert server.metrics_port is not None
    stub = PipelineStub(connect(server))
    for _ in range(3):
        await stub.run_pipeline(Request(image=jpeg), timeout=10)
    with pytest.raises(GRPCError):
        await stub.run_pipeline(Request(image=b"nope"), timeout=10)

    samples = await asyncio.to_thread(scrape, server.metrics_port)

    assert handled(samples, "OK") == 3
    assert handled(samples, "INVALID_ARGUMENT") == 1
    labels = (
        ("grpc_method", "RunPipeline"),
        ("grpc_service", "emotion.v1.Pipeline"),
        ("grpc_type", "unary"),
    )
    assert samples[("grpc_server_handling_seconds_count", labels)] == 4
    assert samples[("grpc_server_started_total", labels)] == 4
    assert samples[("emotion_calls_in_flight", ())] == 0
    assert samples[("emotion_inference_queue_depth", ())] == 0
    assert samples[("emotion_model_load_seconds", ())] >= 0


async def test_batch_sizes_are_observed(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    server = await start_server(BatchModel(), metrics_port=0, max_batch_size=4, max_batch_delay=0.3)
    assert server.metrics_port is not None
    stub = PipelineStub(connect(server))
    await asyncio.gather(*(stub.run_pipeline(Request(image=jpeg), timeout=10) for _ in range(4)))

    samples = await asyncio.to_thread(scrape, server.metrics_port)

    assert samples[("emotion_batch_size_count", ())] == 1
    assert samples[("emotion_batch_size_sum", ())] == 4


@pytest.mark.default_layout  # PidModel answers from the inference processes, one per CPU
@pytest.mark.subprocess
async def test_workers_metrics_are_summed_by_the_supervisor(jpeg: bytes) -> None:
    metrics_port = free_port()
    served = await start_serving(
        "--port",
        "0",
        "--metrics-port",
        str(metrics_port),
        "--workers",
        "2",
        "--model",
        "support.sample_models:PidModel",
    )
    process, port = served.process, served.port
    try:
        pids = set()
        for _ in range(12):  # fresh connections land on both workers
            channel = Channel("127.0.0.1", port)
            try:
                answer = await PipelineStub(channel).run_pipeline(Request(image=jpeg), timeout=10)
            finally:
                channel.close()
            assert answer.response[0].bbox is not None
            pids.add(int(answer.response[0].bbox.x1))
        samples = await asyncio.to_thread(scrape, metrics_port)
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)

    assert len(pids) == 2
    assert handled(samples, "OK") == 12
    assert samples[("emotion_calls_in_flight", ())] == 0


async def test_streams_are_counted_as_bidi_streams(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    server = await start_server(metrics_port=0)
    assert server.metrics_port is not None
    answers = PipelineStub(connect(server)).stream_pipeline([Request(image=jpeg)] * 3, timeout=10)
    assert len([a async for a in answers]) == 3

    samples = await asyncio.to_thread(scrape, server.metrics_port)

    key = (
        "grpc_server_handled_total",
        (
            ("grpc_code", "OK"),
            ("grpc_method", "StreamPipeline"),
            ("grpc_service", "emotion.v1.Pipeline"),
            ("grpc_type", "bidi_stream"),
        ),
    )
    assert samples[key] == 1
