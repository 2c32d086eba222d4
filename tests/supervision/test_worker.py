"""A worker process of `emotion serve`: it drains by itself when its supervisor dies."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from support.served import alive, command_line, inference_processes, start_serving, worker_pids


@pytest.mark.subprocess
async def test_workers_and_processes_end_when_the_supervisor_is_killed() -> None:
    served = await start_serving(
        "--port", "0", "--workers", "2", "--model", "support.sample_models:PidModel"
    )  # fmt: skip
    workers = worker_pids(served.process.pid)
    pool = inference_processes(served.process.pid)
    # An inference process's command line: ... FD PATH MODEL MAX_PIXELS LOG_LEVEL.
    sockets = {Path(command_line(pid).split(b"\0")[-5].decode()).parent for pid in pool}
    try:
        served.process.kill()  # it cannot forward a signal: each worker must notice
        await served.process.wait()
        for _ in range(100):
            if not any(alive(pid) for pid in workers | pool):
                break
            await asyncio.sleep(0.1)
    finally:
        for pid in workers | pool:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

    assert len(workers) == 2
    assert pool
    assert not any(alive(pid) for pid in workers | pool)
    # The supervisor could not remove the processes' socket directory: they did.
    assert len(sockets) == 1
    assert not any(folder.exists() for folder in sockets)
    await served.read_until(f"supervisor (pid {served.process.pid}) is gone; draining")
