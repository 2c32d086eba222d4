"""The inference processes' owner: starts them, restarts one that dies, and stops them.

One pool serves every network worker of a server (``--inference-processes``),
and the supervisor owns it, even for a single worker. Each process listens
on a Unix socket in a private directory (see emotion.inference.process_main);
workers connect to those paths (emotion.inference.process_client, given them as
ServerConfig.inference_sockets), and reconnect when a process is replaced at
the same path. So the model is loaded once per process, however many workers
there are.

The methods block only in :meth:`start`; :meth:`check` is meant to be called
from a supervising loop and never waits; :meth:`watch` calls it from an
event loop, for an owner that has one (the tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from emotion.inference.process_main import ANSWER, READY, Status
from emotion.runtime import exit_reason

log = logging.getLogger(__name__)

#: Seconds before starting again a process that died; doubled while starts keep failing.
_RESTART_DELAY = 0.5
_MAX_RESTART_DELAY = 30.0
#: Seconds a process has to exit once its owner's socket is closed.
_EXIT_WAIT = 1.0
#: glibc's malloc returns freed memory above its heap's top to the system at
#: once, so each image's buffers (a 1.5 MB JPEG's, then its copies) were
#: faulted in afresh: 700 page faults and 3 ms of a 30 ms decode
#: (benchmarks/README.md, "One pool for every worker"). Kept at hand instead,
#: up to this much; other C libraries ignore the variable.
_MALLOC_TOP_PAD = str(16 * 1024 * 1024)
#: What each process runs. `import emotion` loads nothing eagerly, so the
#: process holds the model, the decoder and this module, no server.
_CHILD = "emotion.inference.process_main"


class StartFailed(Exception):
    """An inference process could not load the model; the message says why."""


@dataclass
class _Slot:
    """One process's place: its path outlives the processes that serve it."""

    path: str
    process: subprocess.Popen[bytes] | None = None
    owner: socket.socket | None = None
    ready: bool = False
    failures: int = 0
    restart_at: float | None = None


class InferencePool:
    """``count`` inference processes running the model ``spec``."""

    def __init__(
        self, spec: str, count: int, *, max_pixels: int, log_level: str = "warning"
    ) -> None:
        if count < 1:
            raise ValueError(f"an inference pool needs at least one process, not {count}")
        self.spec = spec
        self.count = count
        self._max_pixels = max_pixels
        self._log_level = log_level
        self._directory = tempfile.mkdtemp(prefix="emotion-inference-")
        self._slots = [_Slot(os.path.join(self._directory, f"{i}.sock")) for i in range(count)]
        self._closed = False

    @property
    def paths(self) -> tuple[str, ...]:
        """Where the workers connect, one path per process."""
        return tuple(slot.path for slot in self._slots)

    @property
    def pids(self) -> list[int]:
        """The processes that have loaded the model and are running."""
        return [
            s.process.pid for s in self._slots if s.ready and s.process and s.process.poll() is None
        ]

    def start(self) -> None:
        """Start every process and wait until each has loaded the model.

        Raises StartFailed, with the first process's reason, and stops the
        others, when one cannot.
        """
        self.launch()
        while not self.started(timeout=1.0):
            pass

    def launch(self) -> None:
        """Start every process; :meth:`started` tells when they have loaded the model."""
        if self._closed:
            raise StartFailed("the inference pool was closed before it started")
        for slot in self._slots:
            self._spawn(slot)

    def started(self, timeout: float = 0.0) -> bool:
        """Whether every launched process has loaded the model, waiting up to ``timeout``.

        Raises StartFailed, with the first process's reason, and stops the
        others, when one cannot.
        """
        try:
            starting = [s for s in self._slots if not s.ready]
            owners = [s.owner for s in starting if s.owner is not None]
            if not owners:
                return True
            readable, _, _ = select.select(owners, [], [], timeout)
            for slot in starting:
                if slot.owner in readable:
                    failure = self._hear(slot)
                    if failure is not None:
                        number = self._slots.index(slot)
                        raise StartFailed(f"inference process {number} failed to start: {failure}")
            return all(slot.ready for slot in self._slots)
        except BaseException:
            self.close()
            raise

    def check(self) -> None:
        """Restart what died, and take the word of what is starting; returns at once."""
        if self._closed:
            return
        now = time.monotonic()
        for slot in self._slots:
            if slot.process is None:
                if slot.restart_at is not None and now >= slot.restart_at:
                    self._spawn(slot)
                continue
            if not slot.ready and slot.owner is not None:
                readable, _, _ = select.select([slot.owner], [], [], 0)
                if readable:
                    failure = self._hear(slot)
                    if failure is not None:
                        log.error(
                            "inference process failed to start: %s; trying again in %.1fs",
                            failure,
                            self._retire(slot),
                        )
                continue
            code = slot.process.poll()
            if code is not None:
                pid = slot.process.pid
                log.warning(
                    "inference process %d exited (%s); starting another in %.1fs",
                    pid,
                    exit_reason(code),
                    self._retire(slot),
                )

    async def watch(self, interval: float = 0.2) -> None:
        """:meth:`check` every ``interval`` seconds, for an owner with an event loop."""
        while True:
            await asyncio.sleep(interval)
            self.check()

    def close(self) -> None:
        """Stop every process: each exits when its owner's socket closes; then remove the paths."""
        self._closed = True
        for slot in self._slots:
            if slot.owner is not None:
                slot.owner.close()
        for slot in self._slots:
            if slot.process is not None:
                _end(slot.process)
            slot.process, slot.owner, slot.ready = None, None, False
        shutil.rmtree(self._directory, ignore_errors=True)

    def _spawn(self, slot: _Slot) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            slot.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    _CHILD,
                    str(theirs.fileno()),
                    slot.path,
                    self.spec,
                    str(self._max_pixels),
                    self._log_level,
                ],
                pass_fds=(theirs.fileno(),),
                env={
                    "MALLOC_TOP_PAD_": _MALLOC_TOP_PAD,
                    **os.environ,
                    "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
                },
            )
        slot.owner = ours
        slot.ready = False
        slot.restart_at = None

    def _hear(self, slot: _Slot) -> str | None:
        """Read a starting process's word: None once it is ready, else why it failed."""
        assert slot.owner is not None
        assert slot.process is not None
        try:
            head = slot.owner.recv(ANSWER.size, socket.MSG_WAITALL)
            status, size = ANSWER.unpack(head)
            reason = slot.owner.recv(size, socket.MSG_WAITALL) if size else b""
        except (OSError, struct.error):
            status, reason = None, b""
        if status == READY:
            slot.ready = True
            slot.failures = 0
            return None
        if status == Status.START_FAILED:
            return reason.decode(errors="replace")
        slot.process.wait()
        return f"inference process exited while starting ({exit_reason(slot.process.returncode)})"

    def _retire(self, slot: _Slot) -> float:
        """Forget a process that died or failed; the seconds until the next one starts."""
        if slot.owner is not None:
            slot.owner.close()
        if slot.process is not None:
            _end(slot.process)
        delay: float = min(_MAX_RESTART_DELAY, _RESTART_DELAY * 2.0**slot.failures)
        slot.failures += 0 if slot.ready else 1
        slot.process, slot.owner, slot.ready = None, None, False
        slot.restart_at = time.monotonic() + delay
        return delay


def _end(process: subprocess.Popen[bytes]) -> None:
    # It ignores SIGTERM (see emotion.inference.process_main): a process that does
    # not exit within _EXIT_WAIT of its socket closing is killed.
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(_EXIT_WAIT)
        return
    process.kill()
    process.wait()
