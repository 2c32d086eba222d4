"""`emotion serve --workers N`: processes sharing one port, restarted when they die.

Tests that tell workers apart by the pid a model answers with run the model
in the workers (`--inference-processes 0`); the pool has tests/inference/test_process_client.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import encode, gradient, subprocess_env
from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError
from support.served import (
    Served,
    alive,
    children,
    inference_processes,
    start_serving,
    wait_for_port,
    worker_pids,
)

from emotion import PipelineStub, Request
from emotion.config import ServeOptions, ServerConfig
from emotion.runtime import available_cpus
from emotion.supervision.supervisor import Supervisor, WorkersFailed, worker_paths


async def start(*args: str, **env: str) -> Served:
    return await start_serving("--port", "0", *args, env=subprocess_env(**env))


async def answering_pids(served: Served, jpeg: bytes, connections: int = 16) -> set[int]:
    """The pids PidModel answers with, one call on each of several fresh connections."""
    seen = set()
    for _ in range(connections):
        channel = Channel("127.0.0.1", served.port)
        try:
            response = await PipelineStub(channel).run_pipeline(Request(image=jpeg), timeout=10)
        finally:
            channel.close()
        assert response.response[0].bbox is not None
        seen.add(int(response.response[0].bbox.x1))
    return seen


@pytest.fixture
async def cleanup() -> AsyncIterator[list[Served]]:
    started: list[Served] = []
    yield started
    for served in started:
        if served.process.returncode is None:
            for pid in worker_pids(served.process.pid):
                os.kill(pid, signal.SIGKILL)
            served.process.kill()
            await served.process.wait()


@pytest.mark.subprocess
async def test_workers_share_the_port_and_connections_spread_across_them(
    cleanup: list[Served], jpeg: bytes
) -> None:
    served = await start(
        "--workers", "2", "--inference-processes", "0", "--model", "support.sample_models:PidModel"
    )
    cleanup.append(served)

    pids = await answering_pids(served, jpeg)

    workers = worker_pids(served.process.pid)
    assert pids == workers
    assert len(pids) == 2
    assert served.process.pid not in pids


@pytest.mark.subprocess
async def test_a_worker_that_dies_is_restarted_and_the_others_keep_serving(
    cleanup: list[Served], jpeg: bytes
) -> None:
    served = await start(
        "--workers",
        "2",
        "--inference-processes",
        "0",
        "--model",
        "support.sample_models:CrashingModel",
    )
    cleanup.append(served)
    before = worker_pids(served.process.pid)

    channel = Channel("127.0.0.1", served.port)
    with pytest.raises((StreamTerminatedError, GRPCError, ConnectionError)):
        await PipelineStub(channel).run_pipeline(
            Request(image=encode(gradient(1200, 100), "JPEG")), timeout=10
        )
    channel.close()
    line = await served.read_until("restarting")
    await served.read_until("serving")
    after = worker_pids(served.process.pid)

    assert "exited (status 3); restarting" in line
    assert len(after) == 2
    assert len(before & after) == 1
    assert await answering_pids(served, jpeg) == after


@pytest.mark.default_layout
@pytest.mark.subprocess
async def test_sigterm_drains_every_worker_and_exits_0(cleanup: list[Served], jpeg: bytes) -> None:
    served = await start("--workers", "2", "--model", "support.sample_models:PidModel")
    cleanup.append(served)
    workers = worker_pids(served.process.pid)
    pool = inference_processes(served.process.pid)

    served.process.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(served.process.wait(), 60)

    assert code == 0
    assert len(pool) == available_cpus()  # the default layout
    assert not any(alive(pid) for pid in workers | pool)
    await served.read_until("all workers stopped")


@pytest.mark.subprocess
async def test_workers_with_a_call_at_a_time_each_send_it_to_their_own_process(
    cleanup: list[Served], jpeg: bytes
) -> None:
    served = await start(
        "--workers", "2", "--inference-processes", "2", "--model", "support.sample_models:PidModel"
    )  # fmt: skip
    cleanup.append(served)

    # One call on each fresh connection: each worker answers from its first
    # process, and the two workers from different ones.
    assert await answering_pids(served, jpeg) == inference_processes(served.process.pid)


@pytest.mark.subprocess
async def test_workers_that_keep_dying_before_serving_make_the_parent_give_up(
    tmp_path: Path, jpeg: bytes
) -> None:
    flag = tmp_path / "fail"
    script = (
        "import logging, sys\n"
        "from emotion.config import ServeOptions, ServerConfig\n"
        "from emotion.supervision.supervisor import Supervisor, WorkersFailed\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from pathlib import Path\n"
        "options = ServeOptions(model='support.sample_models:CrashingModel', workers=2,\n"
        "                       inference_processes=0,\n"
        "                       server=ServerConfig(port=0), port_file=Path(sys.argv[1]))\n"
        "s = Supervisor(options, max_failed_restarts=2, backoff=0.05)\n"
        "try:\n"
        "    s.run()\n"
        "except WorkersFailed as exc:\n"
        "    print(exc, file=sys.stderr)\n"
        "    sys.exit(1)\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        str(tmp_path / "port"),
        stderr=asyncio.subprocess.PIPE,
        env=subprocess_env(EMOTION_TEST_FAIL_FILE=str(flag)),
    )
    try:
        served = Served(process, await wait_for_port(tmp_path / "port", process))
        flag.touch()  # from now on, every restarted worker fails to load
        channel = Channel("127.0.0.1", served.port)
        with pytest.raises((StreamTerminatedError, GRPCError, ConnectionError)):
            await PipelineStub(channel).run_pipeline(
                Request(image=encode(gradient(1200, 100), "JPEG")), timeout=10
            )
        channel.close()
        code = await asyncio.wait_for(process.wait(), 60)
        assert process.stderr is not None
        rest = (await process.stderr.read()).decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert code == 1
    assert "died 3 times in a row before serving" in rest.splitlines()[-1]


def test_a_model_that_cannot_be_imported_fails_before_any_process_starts() -> None:
    options = ServeOptions(model="no_such_module:Model", workers=1, server=ServerConfig(port=0))
    before = children(os.getpid())

    with pytest.raises(WorkersFailed) as failed:
        Supervisor(options).run()

    # The supervisor's own one line, not an inference process's report.
    assert str(failed.value) == "model module 'no_such_module' not found"
    assert children(os.getpid()) == before


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.subprocess
async def test_workers_can_run_on_uvloop(cleanup: list[Served], jpeg: bytes, workers: str) -> None:
    served = await start(
        "--workers", workers, "--inference-processes", "0",
        "--loop", "uvloop", "--model", "support.sample_models:PidModel",
    )  # fmt: skip
    cleanup.append(served)

    pids = await answering_pids(served, jpeg, connections=4)

    assert pids
    assert _event_loops(pids) == {"uvloop"}


def _event_loops(pids: set[int]) -> set[str]:
    """Which event loop library each process has loaded, from its memory maps."""
    found = set()
    for pid in pids:
        maps = Path(f"/proc/{pid}/maps").read_text()
        found.add("uvloop" if "uvloop" in maps else "asyncio")
    return found


def test_each_worker_lists_the_inference_processes_from_its_own_on() -> None:
    paths = ("a.sock", "b.sock", "c.sock")

    firsts = [worker_paths(paths, slot)[0] for slot in range(4)]

    assert firsts == ["a.sock", "b.sock", "c.sock", "a.sock"]
    assert worker_paths(paths, 1) == ("b.sock", "c.sock", "a.sock")
    assert worker_paths((), 3) == ()
