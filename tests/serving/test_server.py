"""The server process: health, reflection, model lifecycle and the graceful drain."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from conftest import EMOTION, TESTS, StartServer, subprocess_env
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from support.sample_models import ClosingModel, FailingLoadModel, GatedLoadModel, GatedModel
from support.served import start_serving

from emotion import PipelineStub, Request, Response, Server
from emotion.serving.server import ModelStartError

SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize("service", ["", "emotion.v1.Pipeline"])
async def test_health_is_not_serving_until_load_finishes_then_serving(
    start_server: StartServer, connect: Callable[[Server], Channel], service: str
) -> None:
    model = GatedLoadModel()
    server = await start_server(model, wait=False)
    health = HealthStub(connect(server))

    before = await health.Check(HealthCheckRequest(service=service), timeout=5)
    model.gate.set()
    await server.wait_loaded()
    after = await health.Check(HealthCheckRequest(service=service), timeout=5)

    assert (before.status, after.status) == (NOT_SERVING, SERVING)


async def test_health_of_an_unknown_service_is_not_found(
    server: Server, connect: Callable[[Server], Channel]
) -> None:
    with pytest.raises(GRPCError) as caught:
        await HealthStub(connect(server)).Check(HealthCheckRequest(service="nope.v1.X"), timeout=5)

    assert caught.value.status is Status.NOT_FOUND


async def test_health_watch_streams_loading_serving_draining(
    start_server: StartServer, connect: Callable[[Server], Channel]
) -> None:
    model = GatedLoadModel()
    server = await start_server(model, wait=False)
    seen: list[int] = []
    async with HealthStub(connect(server)).Watch.open(timeout=10) as stream:
        await stream.send_message(HealthCheckRequest(service="emotion.v1.Pipeline"), end=True)
        seen.append((await stream.recv_message()).status)  # type: ignore[union-attr]
        model.gate.set()
        seen.append((await stream.recv_message()).status)  # type: ignore[union-attr]
        stopping = asyncio.ensure_future(server.stop(grace=5))
        seen.append((await stream.recv_message()).status)  # type: ignore[union-attr]
        await stream.cancel()
    await stopping

    assert seen == [NOT_SERVING, SERVING, NOT_SERVING]


@pytest.mark.subprocess
async def test_reflection_lists_and_describes_the_services(server: Server) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(TESTS / "support" / "reflect.py"),
        f"127.0.0.1:{server.port}",
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)

    assert process.returncode == 0
    assert json.loads(output) == {
        "services": ["emotion.v1.Pipeline", "grpc.health.v1.Health"],
        "methods": {
            "emotion.v1.Pipeline": ["RunPipeline", "StreamPipeline", "Describe"],
            "grpc.health.v1.Health": ["Check", "Watch"],
        },
        "fields": {
            "Expression": [
                "neutral",
                "anger",
                "disgust",
                "fear",
                "happiness",
                "sadness",
                "surprise",
            ],
            "Result": [
                "bbox",
                "expression",
                "confidence",
                "landmarks",
                "track_id",
                "smoothed_expression",
            ],
            "Request": ["image", "options", "frame_time"],
            "Response": ["response", "model", "summary"],
            "DescribeResponse": ["model", "limits", "server_version"],
        },
        "describe": ["emotion.v1.DescribeRequest", "emotion.v1.DescribeResponse"],
    }


async def test_model_is_loaded_once_and_closed_at_stop(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    model = ClosingModel()
    server = await start_server(model)
    stub = PipelineStub(connect(server))
    await stub.run_pipeline(Request(image=jpeg), timeout=5)
    await stub.run_pipeline(Request(image=jpeg), timeout=5)

    await server.stop()

    assert model.calls == ["load", "process_sample", "process_sample", "close"]


async def test_a_failing_load_is_reported_and_health_stays_not_serving(
    start_server: StartServer, connect: Callable[[Server], Channel]
) -> None:
    server = await start_server(FailingLoadModel(), wait=False)

    with pytest.raises(ModelStartError) as caught:
        await server.wait_loaded()
    health = await HealthStub(connect(server)).Check(HealthCheckRequest(), timeout=5)

    assert str(caught.value) == (
        "model FailingLoadModel failed to load: FileNotFoundError: weights.bin is missing"
    )
    assert health.status == NOT_SERVING


async def test_stop_lets_in_flight_calls_finish_and_refuses_new_ones(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    model = GatedModel()
    server = await start_server(model)
    channel = connect(server)
    stub = PipelineStub(channel)
    in_flight = asyncio.ensure_future(stub.run_pipeline(Request(image=jpeg), timeout=30))
    await asyncio.to_thread(model.entered.wait, 10)

    stopping = asyncio.ensure_future(server.stop(grace=30))
    await asyncio.sleep(0.1)
    with pytest.raises(GRPCError) as refused:
        await stub.run_pipeline(Request(image=jpeg), timeout=5)
    health = await HealthStub(channel).Check(HealthCheckRequest(), timeout=5)
    assert not stopping.done()
    model.gate.set()

    assert len((await in_flight).response) == 1
    await asyncio.wait_for(stopping, 10)
    assert refused.value.status is Status.UNAVAILABLE
    assert refused.value.message == "server is shutting down; retry on another"
    assert health.status == NOT_SERVING
    with pytest.raises(OSError, match="Connect call failed"):
        await PipelineStub(Channel("127.0.0.1", server.port)).run_pipeline(
            Request(image=jpeg), timeout=5
        )


async def test_calls_still_running_after_the_grace_period_end_unavailable(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    model = GatedModel()
    server = await start_server(model)
    stub = PipelineStub(connect(server))
    in_flight = asyncio.ensure_future(stub.run_pipeline(Request(image=jpeg), timeout=30))
    await asyncio.to_thread(model.entered.wait, 10)

    stopping = asyncio.ensure_future(server.stop(grace=0.2))
    with pytest.raises(GRPCError) as caught:
        await asyncio.wait_for(in_flight, 10)
    model.gate.set()  # lets the abandoned thread end, so the executor shuts down
    await asyncio.wait_for(stopping, 10)

    assert caught.value.status is Status.UNAVAILABLE
    assert caught.value.message == "server shut down before the call finished; retry"


async def test_a_drain_answers_the_images_a_stream_took_then_ends_it_unavailable(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    model = GatedModel()
    server = await start_server(model, threads=1)  # a stream takes two images at a time
    stub = PipelineStub(connect(server))
    answers: list[Response] = []

    async def images() -> AsyncIterator[Request]:
        for _ in range(50):
            yield Request(image=jpeg)

    async def stream() -> None:
        async for answer in stub.stream_pipeline(images(), timeout=30):
            answers.append(answer)

    streaming = asyncio.ensure_future(stream())
    await asyncio.to_thread(model.entered.wait, 10)
    stopping = asyncio.ensure_future(server.stop(grace=30))
    await asyncio.sleep(0.2)
    model.gate.set()
    with pytest.raises(GRPCError) as caught:
        await asyncio.wait_for(streaming, 10)
    await asyncio.wait_for(stopping, 5)  # not the grace: the stream did not hold it

    assert caught.value.status is Status.UNAVAILABLE
    assert caught.value.message == "server is shutting down; send the other images to another"
    assert len(answers) == 2


async def _call_in_flight(channel: Channel, jpeg: bytes, marker: Path) -> asyncio.Future[Response]:
    """Start a call to SlowModel and return once the model has it (it touches ``marker``)."""
    call = asyncio.ensure_future(
        PipelineStub(channel).run_pipeline(Request(image=jpeg), timeout=60)
    )
    for _ in range(200):
        if await asyncio.to_thread(marker.exists):
            break
        await asyncio.sleep(0.05)
    return call


async def _read_until(stream: asyncio.StreamReader, text: str, seen: list[str]) -> str:
    while True:
        line = (await asyncio.wait_for(stream.readline(), 30)).decode()
        if not line:
            raise AssertionError(f"server exited before logging {text!r}: {''.join(seen)}")
        seen.append(line)
        if text in line:
            return line


async def _start_subprocess(
    *args: str, **env: str
) -> tuple[asyncio.subprocess.Process, int, list[str]]:
    served = await start_serving("--port", "0", *args, env=subprocess_env(**env))
    return served.process, served.port, served.log


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.subprocess
async def test_in_flight_call_completes_across_a_signal_and_the_process_exits_0(
    tmp_path: Path, jpeg: bytes, signum: signal.Signals, workers: str
) -> None:
    marker = tmp_path / "started"
    process, port, log = await _start_subprocess(
        "--workers",
        workers,
        "--model",
        "support.sample_models:SlowModel",
        EMOTION_TEST_MARKER=str(marker),
        EMOTION_TEST_SECONDS="1.5",
    )
    channel = Channel("127.0.0.1", port)
    try:
        call = await _call_in_flight(channel, jpeg, marker)
        process.send_signal(signum)

        response = await call
        assert process.stderr is not None
        rest = (await asyncio.wait_for(process.stderr.read(), 30)).decode()
        code = await asyncio.wait_for(process.wait(), 30)
    finally:
        channel.close()
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert response.response[0].bbox.x2 == 320  # type: ignore[union-attr]
    assert code == 0, "".join(log) + rest
    assert f"received {signum.name}; draining" in rest
    assert "draining 1 in-flight call(s)" in rest
    assert "stopped" in rest


@pytest.mark.subprocess
async def test_a_second_signal_cancels_the_drain(tmp_path: Path, jpeg: bytes) -> None:
    marker = tmp_path / "started"
    process, port, log = await _start_subprocess(
        "--model",
        "support.sample_models:SlowModel",
        "--grace",
        "60",
        EMOTION_TEST_MARKER=str(marker),
        EMOTION_TEST_SECONDS="5",
    )
    channel = Channel("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    try:
        call = await _call_in_flight(channel, jpeg, marker)
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        second_signal = loop.time()
        with pytest.raises(GRPCError) as caught:
            await asyncio.wait_for(call, 30)
        call_ended = loop.time() - second_signal
        assert process.stderr is not None
        rest = (await asyncio.wait_for(process.stderr.read(), 30)).decode()
        code = await asyncio.wait_for(process.wait(), 30)
    finally:
        channel.close()
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert caught.value.status is Status.UNAVAILABLE
    # The model takes 5 s and the grace period is 60 s: only the second signal ends it this soon.
    assert call_ended < 3, f"the call ended {call_ended:.1f}s after the second signal"
    assert "received SIGTERM again; cancelling in-flight calls" in rest
    assert "aborting 1 call(s) still running" in rest
    assert code == 0, "".join(log) + rest


async def _serve_and_wait_for(text: str, *args: str, **env: str) -> asyncio.subprocess.Process:
    """Start `emotion serve` with one worker; return once it logs ``text`` (before serving)."""
    process = await asyncio.create_subprocess_exec(
        *EMOTION,
        "serve",
        "--port",
        "0",
        "--workers",
        "1",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=subprocess_env(**env),
    )
    assert process.stdout is not None
    log: list[str] = []
    await _read_until(process.stdout, text, log)
    return process


@pytest.mark.parametrize(
    ("args", "waiting_for"),
    [
        (["--model", "support.slow_import_model:Model30"], "importing slow_import_model"),
        (["--model", "support.sample_models:SlowLoadModel"], "loading model SlowLoadModel"),
    ],
    ids=["during the model import", "during load()"],
)
@pytest.mark.subprocess
async def test_a_signal_before_serving_stops_at_once_with_exit_0(
    args: list[str], waiting_for: str
) -> None:
    process = await _serve_and_wait_for(waiting_for, *args)
    try:
        process.send_signal(signal.SIGTERM)
        # load() and the import take 30 s; the process must not wait for them.
        code = await asyncio.wait_for(process.wait(), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert code == 0


@pytest.mark.subprocess
async def test_the_grace_period_bounds_the_exit_even_if_the_model_hangs(
    tmp_path: Path, jpeg: bytes
) -> None:
    marker = tmp_path / "started"
    process, port, _ = await _start_subprocess(
        "--workers",
        "1",
        "--grace",
        "1",
        "--model",
        "support.sample_models:SlowModel",
        EMOTION_TEST_MARKER=str(marker),
        EMOTION_TEST_SECONDS="30",
    )
    channel = Channel("127.0.0.1", port)
    try:
        call = await _call_in_flight(channel, jpeg, marker)
        process.send_signal(signal.SIGTERM)
        with pytest.raises(GRPCError) as caught:
            await asyncio.wait_for(call, 10)
        code = await asyncio.wait_for(process.wait(), 10)
    finally:
        channel.close()
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert caught.value.status is Status.UNAVAILABLE
    assert code == 0


async def test_new_connections_are_refused_while_in_flight_calls_drain(
    start_server: StartServer, connect: Callable[[Server], Channel], jpeg: bytes
) -> None:
    model = GatedModel()
    server = await start_server(model)
    in_flight = asyncio.ensure_future(
        PipelineStub(connect(server)).run_pipeline(Request(image=jpeg), timeout=30)
    )
    await asyncio.to_thread(model.entered.wait, 10)

    stopping = asyncio.ensure_future(server.stop(grace=30))
    await asyncio.sleep(0.1)
    try:
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", server.port)
        assert not stopping.done()
    finally:
        model.gate.set()
    await in_flight
    await stopping


@pytest.mark.subprocess
async def test_dual_stack_host_accepts_ipv4_clients(jpeg: bytes) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    process, port, _ = await _start_subprocess(
        "--workers", "1", "--host", "::", "--model", "support.sample_models:PidModel"
    )
    try:
        response = await _call_once("127.0.0.1", port, jpeg)
        response6 = await _call_once("::1", port, jpeg)
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)

    assert response.response[0].bbox is not None
    assert response6.response[0].bbox is not None


async def _call_once(host: str, port: int, jpeg: bytes) -> Response:
    channel = Channel(host, port)
    try:
        return await PipelineStub(channel).run_pipeline(Request(image=jpeg), timeout=10)
    finally:
        channel.close()
