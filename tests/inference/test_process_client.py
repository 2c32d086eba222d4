"""Inference in processes (--inference-processes): the same answers and refusals as threads."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import EMOTION, StartServer, encode, gradient, subprocess_env
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from support.sample_models import (
    CrashingModel,
    FileGatedModel,
    HalfSizeModel,
    PidModel,
    RaisingModel,
    SizeModel,
    SlowModel,
)
from support.served import (
    alive,
    children,
    free_port,
    inference_processes,
    inference_processes_in,
    parent,
    start_serving,
    wait_for_port,
)

from emotion import PipelineStub, Request, Response, Server
from emotion.config import Limits
from emotion.config.limits import DEFAULT_MAX_PIXELS
from emotion.inference.process_client import InferenceProcesses
from emotion.inference.process_pool import InferencePool
from emotion.model import Model, spec_of
from emotion.runtime import available_cpus
from emotion.serving.wiring import Wiring

# Every test here starts processes.
pytestmark = pytest.mark.subprocess

Connect = Callable[[Server], Channel]


StartPooled = Callable[..., Awaitable[Server]]


@pytest.fixture
def sockets_folder() -> Iterator[Path]:
    """A TMPDIR for `emotion serve`: its pool's socket paths, on its processes' command lines,
    then mark them as this test's (short: tmp_path is too long for a Unix socket's path)."""
    folder = Path(tempfile.mkdtemp(prefix="emotion-test-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def start_pooled(start_server: StartServer) -> AsyncIterator[StartPooled]:
    """Start servers that send their images to a pool of ``count`` processes, as a worker does.

    Each pool is watched and replaced as the supervisor would; servers stop
    before their pools close.
    """
    servers: list[Server] = []
    pools: list[InferencePool] = []
    watches: list[asyncio.Future[None]] = []

    async def start(model: Model, count: int, **config: object) -> Server:
        pool = InferencePool(spec_of(model), count, max_pixels=DEFAULT_MAX_PIXELS)
        pools.append(pool)
        await asyncio.to_thread(pool.start)
        watches.append(asyncio.ensure_future(pool.watch()))
        servers.append(
            await start_server(model, wiring=Wiring(inference_sockets=pool.paths), **config)
        )
        return servers[-1]

    yield start
    for server in servers:
        await server.stop(grace=0)
    for watch in watches:
        watch.cancel()
    for pool in pools:
        await asyncio.to_thread(pool.close)


def x1(response: Response) -> float:
    box = response.response[0].bbox
    assert box is not None
    return box.x1


async def one_slow_call(
    start_pooled: StartPooled, connect: Connect, jpeg: bytes
) -> tuple[Server, int, asyncio.Future[Response]]:
    """A server with one inference process running SlowModel, and a call it has taken."""
    server = await start_pooled(SlowModel(), 1)
    assert isinstance(server.backend, InferenceProcesses)
    [pid] = server.backend.pids
    stub = PipelineStub(connect(server))
    call = asyncio.ensure_future(stub.run_pipeline(Request(image=jpeg), timeout=30))
    while not server.backend.queued:  # noqa: ASYNC110 - a count to watch, not an event
        await asyncio.sleep(0.01)
    return server, pid, call


async def test_images_are_decoded_and_inferred_in_other_processes(
    start_pooled: StartPooled, connect: Connect, jpeg: bytes
) -> None:
    server = await start_pooled(PidModel(), 2)
    assert isinstance(server.backend, InferenceProcesses)
    pids = set(server.backend.pids)
    stub = PipelineStub(connect(server))

    answers = await asyncio.gather(
        *(stub.run_pipeline(Request(image=jpeg), timeout=10) for _ in range(12))
    )

    served_by = {int(x1(answer)) for answer in answers}
    assert len(pids) == 2
    assert os.getpid() not in pids
    assert served_by <= pids
    assert served_by


async def test_images_at_once_go_one_to_each_idle_process(
    start_pooled: StartPooled, connect: Connect, jpeg: bytes
) -> None:
    # Each process may hold three images: none may queue while another idles.
    server = await start_pooled(PidModel(), 3)
    assert isinstance(server.backend, InferenceProcesses)
    stub = PipelineStub(connect(server))

    answers = await asyncio.gather(
        *(stub.run_pipeline(Request(image=jpeg), timeout=10) for _ in range(3))
    )

    assert sorted(int(x1(answer)) for answer in answers) == sorted(server.backend.pids)


async def test_images_one_after_another_stay_on_one_process(
    start_pooled: StartPooled, connect: Connect, jpeg: bytes
) -> None:
    # A process whose CPU has just worked runs the next image faster than one
    # that has idled for a whole call.
    server = await start_pooled(PidModel(), 2)
    stub = PipelineStub(connect(server))

    served_by = {
        int(x1(await stub.run_pipeline(Request(image=jpeg), timeout=10))) for _ in range(4)
    }

    assert len(served_by) == 1


async def test_workers_listing_the_processes_from_different_ones_keep_apart(
    start_pooled: StartPooled, start_server: StartServer, connect: Connect, jpeg: bytes
) -> None:
    # Each worker's first process is another's (the supervisor's worker_paths):
    # workers with one call each at a time do not pile onto one process.
    first = await start_pooled(PidModel(), 2)
    paths = first.wiring.inference_sockets
    second = await start_server(PidModel(), wiring=Wiring(inference_sockets=paths[::-1]))
    stubs = [PipelineStub(connect(first)), PipelineStub(connect(second))]

    served_by = [
        {int(x1(await stub.run_pipeline(Request(image=jpeg), timeout=10))) for _ in range(3)}
        for stub in stubs
    ]

    assert len(served_by[0]) == len(served_by[1]) == 1
    assert served_by[0] != served_by[1]
    await second.stop(grace=0)


async def test_answers_are_the_threads_answers(
    start_server: StartServer, start_pooled: StartPooled, connect: Connect, jpeg: bytes
) -> None:
    # A model that wants 500 pixels: the 1600x1200 JPEG is decoded at 1/2 and
    # its boxes scaled back, in the process as in a thread.
    threads = PipelineStub(connect(await start_server(HalfSizeModel())))
    processes = PipelineStub(connect(await start_pooled(HalfSizeModel(), 1)))
    big = encode(gradient(1600, 1200), "JPEG", quality=90)

    for image, width in ((jpeg, 320), (big, 1600)):
        expected = await threads.run_pipeline(Request(image=image), timeout=10)
        answer = await processes.run_pipeline(Request(image=image), timeout=10)
        assert answer == expected
        box = answer.response[0].bbox
        assert box is not None
        assert box.x2 == width
        streamed = [a async for a in processes.stream_pipeline(_twice(image), timeout=10)]
        assert streamed == [expected, expected]


async def _twice(image: bytes):  # type: ignore[no-untyped-def]
    for _ in range(2):
        yield Request(image=image)


async def test_run_pipeline_in_process_returns_the_response(
    start_pooled: StartPooled, jpeg: bytes
) -> None:
    server = await start_pooled(SizeModel(), 1)

    response = await server.service.run_pipeline(Request(image=jpeg))

    assert isinstance(response, Response)
    box = response.response[0].bbox
    assert box is not None
    assert box.x2 == 320


async def test_a_bad_image_is_refused_with_the_decoders_message(
    start_server: StartServer, start_pooled: StartPooled, connect: Connect
) -> None:
    threads = PipelineStub(connect(await start_server(SizeModel())))
    processes = PipelineStub(connect(await start_pooled(SizeModel(), 1)))
    errors = []

    for stub in (threads, processes):
        with pytest.raises(GRPCError) as caught:
            await stub.run_pipeline(Request(image=b"\xff\xd8\xff\xe0 broken"), timeout=10)
        errors.append((caught.value.status, caught.value.message))

    assert errors[0] == errors[1]
    assert errors[1][0] is Status.INVALID_ARGUMENT
    assert "JPEG" in str(errors[1][1])


async def test_a_failing_model_is_internal_its_traceback_logged_and_its_process_serves_on(
    start_pooled: StartPooled,
    connect: Connect,
    jpeg: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await start_pooled(RaisingModel(), 1)
    assert isinstance(server.backend, InferenceProcesses)
    pids = server.backend.pids
    stub = PipelineStub(connect(server))

    with caplog.at_level(logging.ERROR):
        for _ in range(2):
            with pytest.raises(GRPCError) as caught:
                await stub.run_pipeline(Request(image=jpeg), timeout=10)
            assert caught.value.status is Status.INTERNAL
            assert caught.value.message == "model RaisingModel failed: ZeroDivisionError"

    assert server.backend.pids == pids
    logged = [r for r in caplog.records if r.name == "emotion.serving.calls" and r.exc_info]
    assert len(logged) == 2
    assert logged[0].exc_info is not None
    # The model's own traceback, from its process, for the operator only.
    assert "secret detail" in str(logged[0].exc_info[1])
    assert "sample_models.py" in str(logged[0].exc_info[1])


async def test_a_process_that_dies_fails_its_call_unavailable_and_is_replaced(
    start_pooled: StartPooled, connect: Connect, jpeg: bytes
) -> None:
    server = await start_pooled(CrashingModel(), 1)
    assert isinstance(server.backend, InferenceProcesses)
    [first] = server.backend.pids
    stub = PipelineStub(connect(server))

    with pytest.raises(GRPCError) as caught:
        # CrashingModel exits its process on an image wider than 1000 pixels.
        await stub.run_pipeline(Request(image=encode(gradient(1200, 100), "JPEG")), timeout=10)

    assert caught.value.status is Status.UNAVAILABLE
    assert caught.value.message == "the inference process running this call exited; retry"
    answer = await stub.run_pipeline(Request(image=jpeg), timeout=30)
    [second] = server.backend.pids
    assert int(x1(answer)) == second != first
    assert not alive(first)


async def test_a_process_outlives_a_sigterm_sent_to_every_process_and_finishes_its_call(
    start_pooled: StartPooled, connect: Connect, jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a service manager stopping the whole control group does; the
    # supervisor decides when its processes end, after the workers' drain.
    monkeypatch.setenv("EMOTION_TEST_SECONDS", "1")
    server, pid, call = await one_slow_call(start_pooled, connect, jpeg)

    os.kill(pid, signal.SIGTERM)

    assert isinstance(await call, Response)
    assert isinstance(server.backend, InferenceProcesses)
    assert server.backend.pids == [pid]


async def test_a_deadline_that_passes_before_the_image_is_read_never_reaches_the_model(
    start_pooled: StartPooled,
    connect: Connect,
    jpeg: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = tmp_path / "calls"
    monkeypatch.setenv("EMOTION_TEST_SECONDS", "1")
    monkeypatch.setenv("EMOTION_TEST_CALLS", str(calls))
    stub = PipelineStub(connect(await start_pooled(SlowModel(), 1)))

    # One process, sent 3 at once: it reads the first at 0 s, the second at
    # 1 s, the third at 2 s, past the 1.5 s deadline of all three.
    outcomes = await asyncio.gather(
        *(stub.run_pipeline(Request(image=jpeg), timeout=1.5) for _ in range(3)),
        return_exceptions=True,
    )
    await asyncio.sleep(1.5)  # the second image's run ends

    assert isinstance(outcomes[0], Response)
    assert [type(o) for o in outcomes[1:]] == [TimeoutError, TimeoutError]
    assert len(calls.read_text().splitlines()) == 2


async def test_images_past_the_capacity_are_refused_at_once(
    start_pooled: StartPooled,
    connect: Connect,
    jpeg: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EMOTION_TEST_SECONDS", "1")
    server = await start_pooled(SlowModel(), 1, limits=Limits(max_queue=1))
    assert isinstance(server.backend, InferenceProcesses)
    stub = PipelineStub(connect(server))

    # 3 images in the process and 1 waiting: the capacity.
    held = [asyncio.ensure_future(stub.run_pipeline(Request(image=jpeg), timeout=30))]
    for _ in range(3):
        held.append(asyncio.ensure_future(stub.run_pipeline(Request(image=jpeg), timeout=30)))
    while server.backend.queued < 4:  # noqa: ASYNC110 - a count to watch, not an event
        await asyncio.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(GRPCError) as caught:
        await stub.run_pipeline(Request(image=jpeg), timeout=30)

    assert caught.value.status is Status.RESOURCE_EXHAUSTED
    assert time.monotonic() - started < 0.9
    assert all(isinstance(a, Response) for a in await asyncio.gather(*held))


async def test_a_process_is_sent_at_most_three_of_a_workers_images_at_once(
    start_pooled: StartPooled,
    connect: Connect,
    jpeg: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls, gate = tmp_path / "calls", tmp_path / "gate"
    monkeypatch.setenv("EMOTION_TEST_CALLS", str(calls))
    monkeypatch.setenv("EMOTION_TEST_GATE", str(gate))
    server = await start_pooled(FileGatedModel(), 1)
    processes = server.backend
    assert isinstance(processes, InferenceProcesses)
    stub = PipelineStub(connect(server))

    # Eight images for one process, its model held at the first.
    held = [asyncio.ensure_future(stub.run_pipeline(Request(image=jpeg))) for _ in range(8)]
    while processes.queued < 8 or not calls.exists():  # noqa: ASYNC110 - counts to watch
        await asyncio.sleep(0.01)
    # Every caller leaves: an image still in the worker is withdrawn; one sent
    # to the process is run all the same, so the model counts those sent.
    for call in held:
        call.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    while processes.queued:  # noqa: ASYNC110 - a count to watch, not an event
        await asyncio.sleep(0.01)
    gate.touch()
    # The process answers a connection's images in order: once this one is
    # answered, every image sent before it has run.
    await stub.run_pipeline(Request(image=jpeg), timeout=30)

    assert len(calls.read_text().splitlines()) == 3 + 1


async def test_stopping_aborts_waiting_calls(
    start_pooled: StartPooled, connect: Connect, jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMOTION_TEST_SECONDS", "3")
    server, pid, call = await one_slow_call(start_pooled, connect, jpeg)

    await server.stop(grace=0.2)

    with pytest.raises(GRPCError) as caught:
        await call
    assert caught.value.status is Status.UNAVAILABLE
    assert caught.value.message == "server shut down before the call finished; retry"
    assert isinstance(server.backend, InferenceProcesses)
    assert server.backend.pids == []  # its connections are closed; the pool's process is not
    assert alive(pid)


async def served_by(port: int, jpeg: bytes, calls: int) -> set[int]:
    """The pids that answered ``calls`` calls, made on as many connections."""
    channels = [Channel("127.0.0.1", port) for _ in range(calls)]
    try:
        answers = await asyncio.gather(
            *(PipelineStub(c).run_pipeline(Request(image=jpeg), timeout=10) for c in channels)
        )
    finally:
        for channel in channels:
            channel.close()
    return {int(x1(answer)) for answer in answers}


async def test_emotion_serve_workers_share_the_supervisors_processes_which_it_replaces(
    jpeg: bytes,
) -> None:
    served = await start_serving(
        "--port", "0", "--workers", "2", "--inference-processes", "2",
        "--model", "support.sample_models:PidModel",
    )  # fmt: skip
    inference = inference_processes(served.process.pid)
    parents = {parent(pid) for pid in inference}
    first = await served_by(served.port, jpeg, 8)
    killed = min(inference)
    os.kill(killed, signal.SIGKILL)
    later: set[int] = set()
    deadline = time.monotonic() + 30
    while not later - inference and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        later |= await served_by(served.port, jpeg, 8)
    replaced = inference_processes(served.process.pid)
    served.process.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(served.process.wait(), 60)
    assert served.process.stderr is not None
    log = (await served.process.stderr.read()).decode()

    # Two processes for two workers, both children of the supervisor.
    assert len(inference) == 2
    assert parents == {served.process.pid}
    assert first <= inference
    # Each worker was connected to the killed process: each waited for its replacement.
    waiting = re.findall(
        rf"\[(\d+)\] emotion.inference.process_client: inference process {killed} exited", log
    )
    assert len(set(waiting)) == 2
    assert f"inference process {killed} exited (killed by SIGKILL); starting another" in log
    new = replaced - inference
    assert len(new) == 1
    assert later - inference == new
    assert code == 0
    assert not [pid for pid in replaced | set(map(int, waiting)) if alive(pid)]


@dataclass
class PidServer:
    """Who answered calls to ``emotion serve --workers 2 ... PidModel``, and what it logged."""

    supervisor: int
    inference: set[int]
    workers: set[int]
    answered: set[int]
    log: str


async def pid_server(jpeg: bytes, *args: str, **env: str) -> PidServer:
    """Serve PidModel with two workers and ``args``, make 8 calls, stop; who did what."""
    served = await start_serving(
        "--port", "0", "--workers", "2", "--model", "support.sample_models:PidModel", *args,
        env=subprocess_env(**env),
    )  # fmt: skip
    try:
        inference = inference_processes(served.process.pid)
        workers = {pid for pid in children(served.process.pid) if pid not in inference}
        answered = await served_by(served.port, jpeg, 8)
    finally:
        served.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(served.process.wait(), 60)
    assert served.process.stderr is not None
    log = (await served.process.stderr.read()).decode()
    return PidServer(served.process.pid, inference, workers, answered, log)


@pytest.mark.default_layout
@pytest.mark.parametrize(
    ("args", "in_pool"),
    [([], True), (["--max-batch-size", "2"], False), (["--inference-processes", "0"], False)],
)
async def test_emotion_serve_infers_in_one_process_per_cpu_by_default(
    jpeg: bytes, args: list[str], in_pool: bool
) -> None:
    server = await pid_server(jpeg, *args)

    if in_pool:
        assert len(server.inference) == available_cpus()
        assert server.answered <= server.inference
    else:  # batching, or told so: the workers' threads
        assert server.inference == set()
        assert server.answered <= server.workers
    assert server.answered


async def test_workers_leave_the_models_module_to_the_processes(
    jpeg: bytes, tmp_path: Path
) -> None:
    imports = tmp_path / "imports"

    server = await pid_server(jpeg, EMOTION_TEST_IMPORTS=str(imports))

    importers = {int(line) for line in imports.read_text().split()}
    assert server.answered <= server.inference
    # The supervisor checks --model; the processes run it; the workers only name it.
    assert importers == {server.supervisor} | server.inference
    assert not server.workers & importers
    named = re.findall(r"\[(\d+)\] emotion\.serving\.server: model PidModel loaded in", server.log)
    assert len(set(named)) == 2
    assert {int(pid) for pid in named} <= server.workers


async def health(port: int) -> int | None:
    """Pipeline's health status on ``port``, or None while nothing listens there."""
    channel = Channel("127.0.0.1", port)
    try:
        reply = await HealthStub(channel).Check(
            HealthCheckRequest(service="emotion.v1.Pipeline"), timeout=5
        )
    except (ConnectionError, OSError):
        return None
    finally:
        channel.close()
    return int(reply.status)


async def test_emotion_serve_workers_listen_not_serving_while_the_processes_load(
    jpeg: bytes, tmp_path: Path
) -> None:
    port = free_port()
    port_file = tmp_path / "port"
    process = await asyncio.create_subprocess_exec(
        *EMOTION, "serve", "--port", str(port), "--workers", "2", "--port-file", str(port_file),
        "--inference-processes", "1", "--model", "support.sample_models:SlowLoadModel",
        env=subprocess_env(EMOTION_TEST_SECONDS="3"),
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        seen: list[int] = []
        deadline = time.monotonic() + 60
        while HealthCheckResponse.SERVING not in seen and time.monotonic() < deadline:
            status = await health(port)
            if status is not None and status not in seen:
                seen.append(status)
            await asyncio.sleep(0.1)
        await wait_for_port(port_file, process, 60)  # every worker serves
        answer = await PipelineStub(channel := Channel("127.0.0.1", port)).run_pipeline(
            Request(image=jpeg), timeout=10
        )
        channel.close()
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 60)

    assert seen == [HealthCheckResponse.NOT_SERVING, HealthCheckResponse.SERVING]
    assert isinstance(answer, Response)
    assert code == 0


async def test_emotion_serve_exits_1_with_the_reason_when_the_processes_cannot_load(
    sockets_folder: Path,
) -> None:
    # One worker too: the supervisor owns the processes.
    process = await asyncio.create_subprocess_exec(
        *EMOTION, "serve", "--port", "0", "--workers", "1",
        "--inference-processes", "2", "--model", "support.sample_models:FailingLoadModel",
        env=subprocess_env(TMPDIR=str(sockets_folder)),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 60)

    assert process.returncode == 1
    assert stderr.decode().splitlines()[-1] in {
        f"emotion serve: inference process {number} failed to start: model FailingLoadModel "
        "failed to load: FileNotFoundError: weights.bin is missing"
        for number in (0, 1)
    }
    assert inference_processes_in(sockets_folder) == set()


async def test_emotion_serve_stopped_while_its_processes_load_leaves_none_running(
    sockets_folder: Path,
) -> None:
    process = await asyncio.create_subprocess_exec(
        *EMOTION, "serve", "--port", "0", "--workers", "1",
        "--inference-processes", "2", "--model", "support.sample_models:SlowLoadModel",
        env=subprocess_env(TMPDIR=str(sockets_folder), EMOTION_TEST_SECONDS="120"),
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len(loading := inference_processes_in(sockets_folder)) < 2:
            assert time.monotonic() < deadline, "the inference processes never started"
            await asyncio.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 60)
        # The supervisor is gone: a process left loading would be init's child now.
        left = inference_processes_in(sockets_folder)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        for pid in inference_processes_in(sockets_folder):
            os.kill(pid, signal.SIGKILL)

    assert len(loading) == 2
    assert code == 0
    assert left == set()
