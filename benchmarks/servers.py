"""The servers under test: started as subprocesses on free ports; CPU and memory from /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MOCK = "emotion.models.mock:MockModel"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Target:
    name: str
    kind: str  # "grpc" or "rest"
    command: list[str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [part.replace("{port}", str(self.port)) for part in self.command]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and all its descendants so far."""
        assert self.process is not None
        return sum(_cpu_of(pid) for pid in _tree(self.process.pid))

    def pids(self) -> list[int]:
        """The server and all its descendants (its workers), found once: scanning /proc is slow."""
        assert self.process is not None
        return list(_tree(self.process.pid))

    def memory(self, pids: list[int] | None = None) -> Memory:
        """Memory of the whole process tree now (of ``pids``, as ``pids()`` found them)."""
        return sum((_memory_of(pid) for pid in pids or self.pids()), Memory())


@dataclass(frozen=True)
class Memory:
    """Bytes of a process tree: PSS and RSS, each summed over its processes.

    Workers forked from one parent share the pages they have not written
    since, so summing RSS counts those pages once per worker. PSS divides
    each shared page among the processes that map it, so its sum is what
    the tree really holds; RSS is kept beside it to show the sharing.
    """

    pss: int = 0
    rss: int = 0

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.pss + other.pss, self.rss + other.rss)

    def peak(self, other: Memory) -> Memory:
        return Memory(max(self.pss, other.pss), max(self.rss, other.rss))


def _tree(root: int) -> Iterator[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents.setdefault(int(stat[1]), []).append(int(entry.name))
    pending = [root]
    while pending:
        pid = pending.pop()
        yield pid
        pending.extend(parents.get(pid, []))


def command_line(pid: int) -> bytes:
    """The process's command line, or nothing once it has exited."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def children(pid: int) -> list[int]:
    """The processes ``pid`` started, from any of its threads (each thread lists its own)."""
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found |= {int(child) for child in (task / "children").read_text().split()}
    return sorted(found)


def workers(supervisor: int) -> list[int]:
    """The worker processes of `emotion serve --workers N` (multiprocessing's spawned children)."""
    return [pid for pid in children(supervisor) if b"spawn_main" in command_line(pid)]


def inference_processes(supervisor: int) -> list[int]:
    """Its inference processes, under either module name they have had."""
    names = (b"emotion.inference.process_main", b"emotion.inference_process")
    return [pid for pid in children(supervisor) if any(name in command_line(pid) for name in names)]


def holding(pids: list[int], port: int) -> list[int]:
    """Those of ``pids`` holding an established connection accepted on ``port``."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                sockets.add(f"socket:[{fields[9]}]")
    found = []
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in sockets:
                        found.append(pid)
                        break
    return found


def _cpu_of(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(stat[11]) + int(stat[12])) / CLOCK_TICKS


def _memory_of(pid: int) -> Memory:
    """PSS and RSS of one process from smaps_rollup; RSS for both where that is unreadable."""
    fields: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            name, value, *_ = line.split()
            fields[name] = int(value) * 1024
    if "Pss:" in fields and "Rss:" in fields:
        return Memory(fields["Pss:"], fields["Rss:"])
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
                return Memory(rss, rss)
    return Memory()  # the process has gone


def targets(model: str, workers: int, extra: list[str]) -> list[Target]:
    """emotion serving ``model``; with the mock model, the two references beside it."""
    python = sys.executable
    ours = Target(
        "emotion",
        "grpc",
        [
            python,
            "-m",
            "emotion",
            "serve",
            "--port",
            "{port}",
            "--model",
            model,
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            *extra,
        ],
    )
    if model != MOCK:
        return [ours]
    return [
        ours,
        Target("grpcio", "grpc", [python, str(HERE / "reference_grpcio.py"), "--port", "{port}"]),
        Target("REST", "rest", [python, str(HERE / "reference_rest.py"), "--port", "{port}"]),
    ]
