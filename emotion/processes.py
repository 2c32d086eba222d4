"""Inference in processes of their own: the network worker's side (``--inference-processes``).

With threads, one worker's event loop shares its GIL with the Python parts
of decoding and of the model, and one client connection, served by one
worker, waits on it (benchmarks/README.md, "Inference in processes"). Here
each image goes to an inference process (emotion.inference_process) over a
socket pair, as raw bytes, and comes back as the written answer.

What the thread queue (emotion.inference) promises holds here too: at most
``capacity`` images waiting or running, refused beyond; a call that leaves
before its image is sent withdraws it; a deadline that passes before the
image is read never reaches the model; :meth:`abort` ends every call that
waits. Each process is sent up to ``depth`` images at once, so it never
waits for the worker between two. A process that dies fails the calls it
held with ProcessExited, and is started again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Coroutine

from emotion.decode import InvalidImage
from emotion.inference import Aborted, DeadlinePassed, QueueFull
from emotion.inference_process import ANSWER, READY, REQUEST, Status
from emotion.metrics import NoMetrics, Recorder
from emotion.model import ModelFailure

log = logging.getLogger(__name__)

#: Images a process is sent before it answers the first of them.
DEPTH = 3
#: Seconds before starting again a process that died; doubled while starts keep failing.
_RESTART_DELAY = 0.5
_MAX_RESTART_DELAY = 30.0
#: Seconds a process has to exit once its socket is closed.
_EXIT_WAIT = 1.0
# Not `-m emotion.inference_process`: the package imports that module first,
# and runpy would run a second copy of it.
_CHILD = "import sys; from emotion.inference_process import main; sys.exit(main(sys.argv[1:]))"


class ProcessExited(Exception):
    """The inference process holding the call's image exited; the call may be retried."""

    def __init__(self) -> None:
        super().__init__("the inference process running this call exited; retry")


class InferenceProcessError(Exception):
    """What a model raised in an inference process: its traceback there, as text."""


class StartFailed(Exception):
    """An inference process could not load the model; the message says why."""


class _Process:
    """One inference process, and the calls whose images it holds, in the order sent."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.process = process
        self._reader = reader
        self._writer = writer
        self.alive = True
        self._held: collections.deque[asyncio.Future[tuple[Status, bytes]]] = collections.deque()

    async def ready(self) -> None:
        """Wait for its first answer: the model loaded, or StartFailed."""
        try:
            status, payload = await self._read()
        except (asyncio.IncompleteReadError, ConnectionError):
            raise StartFailed(
                f"inference process exited while starting ({self.exit_status()})"
            ) from None
        if status != READY:
            raise StartFailed(payload.decode(errors="replace"))

    def send(self, image: bytes, deadline: float | None) -> asyncio.Future[tuple[Status, bytes]]:
        answer: asyncio.Future[tuple[Status, bytes]] = asyncio.get_running_loop().create_future()
        self._held.append(answer)
        self._writer.write(REQUEST.pack(deadline or 0.0, len(image)))
        self._writer.write(image)
        return answer

    async def answer_all(self) -> None:
        """Hand each answer to its call until the process exits; then fail the calls it held."""
        try:
            while True:
                answer = await self._read()
                held = self._held.popleft()
                if not held.done():  # its caller left, or the server aborted it
                    held.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.alive = False
            while self._held:
                held = self._held.popleft()
                if not held.done():
                    held.set_exception(ProcessExited())

    def abort(self) -> None:
        for held in self._held:
            if not held.done():
                held.set_exception(Aborted())

    async def close(self) -> None:
        """Close its socket: an idle process exits; one still running an image is stopped."""
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()
        # It ignores SIGTERM (see emotion.inference_process): a process that
        # does not exit within _EXIT_WAIT of its socket closing is killed.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), _EXIT_WAIT)
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()

    async def _read(self) -> tuple[Status, bytes]:
        status, size = ANSWER.unpack(await self._reader.readexactly(ANSWER.size))
        return Status(status), await self._reader.readexactly(size)

    def exit_status(self) -> str:
        code = self.process.returncode
        return "still running" if code is None else f"status {code}"


class InferenceProcesses:
    """``count`` inference processes running ``spec``, each sent up to ``depth`` images at once."""

    def __init__(
        self,
        spec: str,
        count: int,
        *,
        capacity: int,
        max_pixels: int,
        depth: int = DEPTH,
        metrics: Recorder | None = None,
        log_level: str = "warning",
    ) -> None:
        self.spec = spec
        self.count = count
        self.capacity = capacity
        self.depth = depth
        self._max_pixels = max_pixels
        self._metrics = metrics or NoMetrics()
        self._log_level = log_level
        self._queued = 0
        # A process appears once per image it may still be sent.
        self._free: collections.deque[_Process] = collections.deque()
        self._waiting: collections.deque[asyncio.Future[_Process]] = collections.deque()
        self._processes: set[_Process] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def queued(self) -> int:
        """Images taken and not answered: waiting for a process, or in one."""
        return self._queued

    @property
    def pids(self) -> list[int]:
        return [p.process.pid for p in self._processes if p.alive]

    async def start(self) -> None:
        """Start every process; raise StartFailed (and stop the others) if one cannot load."""
        started = await asyncio.gather(
            *(self._start_one() for _ in range(self.count)), return_exceptions=True
        )
        failure = next((s for s in started if isinstance(s, BaseException)), None)
        for process in started:
            if isinstance(process, _Process):
                self._serve(process)
        if failure is not None:
            await self.close()
            raise failure

    async def run(self, image: bytes, deadline: float | None) -> bytes:
        """The written Response for ``image``; raises as emotion.inference's queue does."""
        if self._queued >= self.capacity:
            raise QueueFull(self._queued)
        self._queued += 1
        self._metrics.queue_depth.inc()
        try:
            status, payload = await self._run(image, deadline)
        finally:
            self._queued -= 1
            self._metrics.queue_depth.dec()
        if status is Status.OK:
            return payload
        message, _, detail = payload.decode(errors="replace").partition("\0")
        if status is Status.INVALID_IMAGE:
            raise InvalidImage(message)
        if status is Status.DEADLINE_PASSED:
            raise DeadlinePassed
        # The model's traceback, from its process: logged with the call, as with threads.
        raise ModelFailure(message) from InferenceProcessError(detail)

    async def _run(self, image: bytes, deadline: float | None) -> tuple[Status, bytes]:
        process = await self._take()
        try:
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlinePassed
            answer = process.send(image, deadline)
        except BaseException:
            self._give_back(process)
            raise
        try:
            result = await asyncio.shield(answer)
        except asyncio.CancelledError:
            # The process works on the image all the same: its place frees when
            # it answers, so a client that keeps leaving cannot pile work on it.
            answer.add_done_callback(lambda _: self._answered_unobserved(answer, process))
            raise
        except BaseException:
            self._give_back(process)
            raise
        self._give_back(process)
        return result

    def _answered_unobserved(
        self, answer: asyncio.Future[tuple[Status, bytes]], process: _Process
    ) -> None:
        if not answer.cancelled():
            answer.exception()  # nobody waits for it: no "never retrieved" warning
        self._give_back(process)

    def abort(self) -> None:
        """End every call waiting for a process or its answer with Aborted."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(Aborted())
        for process in self._processes:
            process.abort()

    async def close(self) -> None:
        """Stop every process: each exits when its socket closes."""
        self._closing = True
        self.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(p.close() for p in self._processes), return_exceptions=True)
        self._processes.clear()
        self._free.clear()

    async def _take(self) -> _Process:
        while self._free:
            process = self._free.popleft()
            if process.alive:
                return process
        waiter: asyncio.Future[_Process] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            # Given a process as it was cancelled: pass it on, or it is lost.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give_back(waiter.result())
            raise

    def _give_back(self, process: _Process) -> None:
        if not process.alive:
            return
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(process)
                return
        self._free.append(process)

    async def _start_one(self) -> _Process:
        ours, theirs = socket.socketpair()
        with theirs:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _CHILD,
                str(theirs.fileno()),
                self.spec,
                str(self._max_pixels),
                self._log_level,
                pass_fds=(theirs.fileno(),),
                env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
            )
        reader, writer = await asyncio.open_connection(sock=ours, limit=2**24)
        started = _Process(process, reader, writer)
        try:
            await started.ready()
        except BaseException:
            await started.close()
            raise
        return started

    def _serve(self, process: _Process) -> None:
        self._processes.add(process)
        for _ in range(self.depth):
            self._give_back(process)
        self._spawn(self._watch(process))

    async def _watch(self, process: _Process) -> None:
        await process.answer_all()
        self._processes.discard(process)
        await process.close()
        if not self._closing:
            log.warning(
                "inference process %d exited (%s); starting another",
                process.process.pid,
                process.exit_status(),
            )
        delay = _RESTART_DELAY
        while not self._closing:
            await asyncio.sleep(delay)
            if self._closing:
                return
            try:
                self._serve(await self._start_one())
                return
            except StartFailed as exc:
                log.error("inference process failed to start: %s", exc)
                delay = min(_MAX_RESTART_DELAY, delay * 2)

    def _spawn(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
