"""Start `emotion serve` in a subprocess and learn its port from ``--port-file``, not its log."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from conftest import EMOTION, serve_args, subprocess_env

PIPE = asyncio.subprocess.PIPE


class Served:
    """A running `emotion serve`, the port it serves on, and its log read so far."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.log: list[str] = []

    @property
    def target(self) -> str:
        """Its address as clients take it (``--target``)."""
        return f"127.0.0.1:{self.port}"

    async def stop(self, timeout: float = 15) -> int:
        """SIGTERM, as an operator stops it; killed if still running after ``timeout``.

        Its exit status.
        """
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        code = self.process.returncode
        assert code is not None
        return code

    async def read_until(self, text: str, timeout: float = 60) -> str:
        """Read its log (stderr, or stdout when merged) up to a line holding ``text``."""
        stream = self.process.stderr or self.process.stdout
        assert stream is not None, "the log is not piped"
        while True:
            line = (await asyncio.wait_for(stream.readline(), timeout)).decode()
            if not line:
                raise AssertionError(f"no {text!r} before exit:\n{''.join(self.log)}")
            self.log.append(line)
            if text in line:
                return line


async def start_serving(
    *args: str,
    command: Sequence[str] = EMOTION,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = PIPE,
    timeout: float = 60,
    **extra_env: str,
) -> Served:
    """Run ``command serve ARGS --port-file ...``; return once it serves (every worker).

    On an ephemeral port unless ``args`` or the environment name one.

    ``env`` replaces the test environment (:func:`conftest.subprocess_env` with
    ``extra_env``). In a test, one worker and one inference process unless
    ``args`` or the environment say otherwise (:func:`conftest.serve_args`).
    """
    folder = Path(tempfile.mkdtemp(prefix="emotion-port-"))
    port_file = folder / "port"
    environ = subprocess_env(**extra_env) if env is None else env
    if "--port" not in {arg.split("=", 1)[0] for arg in args} and "EMOTION_PORT" not in environ:
        args = (*args, "--port", "0")  # never the default port: test runs share the machine
    process = await asyncio.create_subprocess_exec(
        *command,
        "serve",
        *serve_args(args, environ),
        "--port-file",
        str(port_file),
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        env=environ,
    )
    try:
        port = await wait_for_port(port_file, process, timeout)
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return Served(process, port)


async def wait_for_port(
    path: Path, process: asyncio.subprocess.Process, timeout: float = 60
) -> int:
    """The port once ``process`` writes it to ``path``; fails if it exits first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(path.exists):
        if process.returncode is not None:
            log = process.stderr or process.stdout
            text = (await log.read()).decode() if log is not None else ""
            raise AssertionError(f"exited with {process.returncode} before serving:\n{text}")
        if loop.time() > deadline:
            raise AssertionError(f"no port in {path} within {timeout}s")
        await asyncio.sleep(0.05)
    return int(await asyncio.to_thread(path.read_text))


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie not yet reaped counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def resident(pid: int) -> int:
    """Resident memory of process ``pid`` in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def children(pid: int) -> set[int]:
    """The processes ``pid`` started, from any of its threads (each thread lists its own)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            found |= {int(child) for child in (task / "children").read_text().split()}
    return found


def descendants(pid: int) -> set[int]:
    found = children(pid)
    for child in list(found):
        with contextlib.suppress(FileNotFoundError):
            found |= descendants(child)
    return found


def command_line(pid: int) -> bytes:
    """The process's command line, or nothing once it has exited."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def inference_processes(pid: int) -> set[int]:
    """The inference processes (emotion.inference.process_main) under process ``pid``."""
    return {p for p in descendants(pid) if b"emotion.inference.process_main" in command_line(p)}


def inference_processes_in(folder: str | Path) -> set[int]:
    """Every running inference process whose socket lies under ``folder``, whoever its parent.

    Found by command line (``... FD PATH ...``), not by parentage: a process
    whose owner exited is re-parented to init, where :func:`descendants`
    never looks. A zombie's command line is empty (it has ended), as is that of
    a process for the moment its exec takes.
    """
    marker = str(folder).encode() + b"/"
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            line = command_line(int(entry.name))
            if b"emotion.inference.process_main" in line and marker in line:
                found.add(int(entry.name))
    return found


def worker_pids(pid: int) -> set[int]:
    """Worker processes of the supervisor ``pid`` (not multiprocessing's resource tracker)."""
    return {child for child in children(pid) if b"spawn_main" in command_line(child)}


def serving_workers(supervisor: int, port: int) -> set[int]:
    """The workers holding an open connection accepted on ``port``."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # ESTABLISHED
                sockets.add(f"socket:[{fields[9]}]")
    found = set()
    for pid in worker_pids(supervisor):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in sockets:
                    found.add(pid)
            except OSError:
                continue
    return found


#: The two ways `emotion serve` runs: a supervisor with workers and an
#: inference process, or one process alone, the model in its threads.
LAYOUTS = {
    "supervised": ("--workers", "2", "--inference-processes", "1"),
    "alone": ("--workers", "1", "--inference-processes", "0"),
}


async def kill_tree(served: Served) -> None:
    """Kill a server still running, its workers first, so none outlives the test."""
    if served.process.returncode is not None:
        return
    for pid in worker_pids(served.process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    served.process.kill()
    await served.process.wait()
