"""SIGHUP to `emotion serve`: every server process reads its TLS and token files again.

The in-process cases (bad files, the client CA, open connections) are in
tests/serving/test_credentials.py; these check the signal's path, with and
without the supervisor.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from support.certs import Authority, install, presented_name
from support.served import LAYOUTS, Served, kill_tree, start_serving, worker_pids

from emotion import Client
from emotion.config import ClientTls

#: Every test here starts processes (emotion serve, its workers, inference processes).
pytestmark = pytest.mark.subprocess


@pytest.fixture
async def servers() -> AsyncIterator[list[Served]]:
    started: list[Served] = []
    yield started
    for served in started:
        await kill_tree(served)


async def status_with(port: int, ca: Path, token: str, jpeg: bytes) -> Status:
    async with Client(f"127.0.0.1:{port}", tls=ClientTls(ca=ca), token=token) as client:
        try:
            await client.predict(jpeg, timeout=10)
        except GRPCError as exc:
            return exc.status
    return Status.OK


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_sighup_makes_every_server_process_read_its_files_again(
    servers: list[Served], tmp_path: Path, jpeg: bytes, layout: str
) -> None:
    ca = Authority(tmp_path, "ca")
    old, new = ca.issue("server-old", server=True), ca.issue("server-new", server=True)
    cert, key, tokens = tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "tokens"
    install(old.cert, cert)
    install(old.key, key)
    tokens.write_text("old-token\n")
    served = await start_serving(
        "--port", "0", *LAYOUTS[layout], "--model", "emotion.models.mock:MockModel",
        "--tls-cert", str(cert), "--tls-key", str(key), "--auth-tokens-file", str(tokens),
    )  # fmt: skip
    servers.append(served)
    assert await status_with(served.port, ca.cert, "old-token", jpeg) is Status.OK

    install(new.cert, cert)
    install(new.key, key)
    tokens.write_text("new-token\n")
    served.process.send_signal(signal.SIGHUP)
    # Each server process logs a line for its certificate and one for its tokens.
    readers = worker_pids(served.process.pid) if layout == "supervised" else {served.process.pid}
    reread = [
        await served.read_until("read again from", timeout=10) for _ in range(2 * len(readers))
    ]

    assert {int(re.findall(r"\[(\d+)\]", line)[0]) for line in reread} == readers
    names = {await presented_name(served.port, ca.cert) for _ in range(8)}
    assert names == {"server-new"}
    assert await status_with(served.port, ca.cert, "old-token", jpeg) is Status.UNAUTHENTICATED
    assert await status_with(served.port, ca.cert, "new-token", jpeg) is Status.OK
    assert served.process.returncode is None
    served.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.process.wait(), 30) == 0


async def test_sighup_while_a_worker_starts_does_not_kill_it(servers: list[Served]) -> None:
    served = await start_serving(
        "--port", "0", *LAYOUTS["supervised"], "--model", "emotion.models.mock:MockModel"
    )  # fmt: skip
    servers.append(served)
    os.kill(min(worker_pids(served.process.pid)), signal.SIGKILL)

    async def hang_up_again_and_again() -> None:
        for _ in range(40):  # through the new worker's start, before it handles SIGHUP
            served.process.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.05)

    await asyncio.gather(hang_up_again_and_again(), served.read_until("restarting"))
    await served.read_until("; serving", timeout=20)

    assert not [line for line in served.log if "killed by SIGHUP" in line]
    assert len(worker_pids(served.process.pid)) == 2
