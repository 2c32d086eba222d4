"""Inference in processes of their own: the network worker's side (``--inference-processes``).

With threads, one worker's event loop shares its GIL with the Python parts
of decoding and of the model, and one client connection, served by one
worker, waits on it (benchmarks/README.md, "Inference in processes"). Here
each image goes to an inference process (emotion.inference.process_main) over a
Unix socket, as raw bytes, and comes back as the written answer. The
processes belong to a pool (emotion.inference.process_pool) that every worker of the server
shares; this side only connects to their paths.

What the thread queue (emotion.inference.threads) promises holds here too: at most
``capacity`` images waiting or running, refused beyond; a call that leaves
before its image is sent withdraws it; a deadline that passes before the
image is read never reaches the model; :meth:`abort` ends every call that
waits. Each process is sent up to ``depth`` images at once, so it never
waits for this worker between two, and each image goes to the process that
holds the fewest of this worker's images, the first of them in ``paths``.
When a process dies, the calls it held fail with ProcessExited, and the
worker connects to the one the pool starts in its place.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import time
from collections.abc import Coroutine

from emotion.codec import encode
from emotion.contract import ModelDescription, Options
from emotion.decode import InvalidImage
from emotion.inference.process_connection import (
    Answer,
    ProcessConnection,
    Unreachable,
)
from emotion.inference.process_main import Status, Steps
from emotion.inference.threads import Aborted, DeadlinePassed, QueueFull
from emotion.model import ModelFailure
from emotion.observability.metrics import NoMetrics, Recorder
from emotion.observability.tracing import DECODE, MODEL, QUEUE, NoTracing, Tracer

log = logging.getLogger(__name__)

#: Images a process is sent before it answers the first of them.
DEPTH = 3
#: Seconds between tries to reach a process being replaced; doubled up to the maximum.
_RECONNECT_DELAY = 0.05
_MAX_RECONNECT_DELAY = 2.0


class InferenceProcessError(Exception):
    """What a model raised in an inference process: its traceback there, as text."""


class InferenceProcesses:
    """Connections to the inference processes at ``paths``, each sent up to ``depth`` images."""

    def __init__(
        self,
        paths: tuple[str, ...],
        *,
        capacity: int,
        depth: int = DEPTH,
        metrics: Recorder | None = None,
        tracing: Tracer | None = None,
    ) -> None:
        self.paths = paths
        self.capacity = capacity
        self.depth = depth
        self._metrics = metrics or NoMetrics()
        self._tracing = tracing or NoTracing()
        self._queued = 0
        self._waiting: collections.deque[asyncio.Future[ProcessConnection]] = collections.deque()
        # By path: the one this worker reaches there now.
        self._processes: dict[str, ProcessConnection] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._description: ModelDescription | None = None

    @property
    def queued(self) -> int:
        """Images taken and not answered: waiting for a process, or in one."""
        return self._queued

    @property
    def pids(self) -> list[int]:
        """The processes this worker is connected to."""
        return [p.pid for p in self._processes.values() if p.alive]

    @property
    def description(self) -> ModelDescription:
        """What the model says of itself, as the process reached last told this worker."""
        if self._description is None:
            raise RuntimeError("no inference process reached yet")
        return self._description

    async def start(self) -> None:
        """Connect to every process, waiting for those that are still loading the model.

        Whoever owns the processes decides when a start has failed; this waits.
        """
        connected = await asyncio.gather(*(self._connect(path) for path in self.paths))
        for path, process in zip(self.paths, connected, strict=True):
            self._serve(path, process)

    async def _connect(self, path: str) -> ProcessConnection:
        delay = _RECONNECT_DELAY
        while True:
            try:
                return await ProcessConnection.connect(path)
            except Unreachable:
                await asyncio.sleep(delay)
                delay = min(_MAX_RECONNECT_DELAY, delay * 2)

    async def run(
        self, image: bytes, deadline: float | None, options: Options | None = None
    ) -> bytes:
        """The written Response for ``image``; raises as emotion.inference.threads's queue does."""
        if self._queued >= self.capacity:
            raise QueueFull(self._queued)
        self._queued += 1
        self._metrics.queue_depth.inc()
        queued = time.time_ns()
        # Most calls have none: nothing to write, and nothing to read there.
        written_options = b"" if options is None else encode(options)
        try:
            status, payload, steps = await self._run(image, deadline, queued, written_options)
        finally:
            self._queued -= 1
            self._metrics.queue_depth.dec()
        failure = _failure(status, payload)
        self._trace(queued, steps, failure)
        if failure is not None:
            raise failure
        return payload

    def _trace(self, queued: int, steps: Steps, failure: Exception | None) -> None:
        """The spans threads would make: the wait, then each step as the process timed it."""
        self._tracing.record(QUEUE, queued, steps.decode_start or time.time_ns())
        if steps.decode_start:
            # A bad image is the caller's fault, not the server's: not an ERROR span.
            bad = failure if isinstance(failure, InvalidImage) else None
            self._tracing.record(DECODE, steps.decode_start, steps.decode_end, bad, errors=False)
        if steps.model_start:
            model_failure = failure if isinstance(failure, ModelFailure) else None
            self._tracing.record(MODEL, steps.model_start, steps.model_end, model_failure)

    async def _run(
        self, image: bytes, deadline: float | None, queued: int, options: bytes
    ) -> Answer:
        try:
            process = await self._take()
        except BaseException:
            self._tracing.record(QUEUE, queued, time.time_ns())
            raise
        try:
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlinePassed
            answer = process.send(image, deadline, options)
        except BaseException:
            self._give_back(process)
            self._tracing.record(QUEUE, queued, time.time_ns())
            raise
        try:
            result = await asyncio.shield(answer)
        except asyncio.CancelledError:
            # The process works on the image all the same: its place frees when
            # it answers, so a client that keeps leaving cannot pile work on it,
            # and its steps are traced then, in the call's trace, as a thread's are.
            context = contextvars.copy_context()
            answer.add_done_callback(
                lambda _: self._answered_unobserved(answer, process, queued, context)
            )
            raise
        except BaseException:
            self._give_back(process)
            self._tracing.record(QUEUE, queued, time.time_ns())
            raise
        self._give_back(process)
        return result

    def _answered_unobserved(
        self,
        answer: asyncio.Future[Answer],
        process: ProcessConnection,
        queued: int,
        context: contextvars.Context,
    ) -> None:
        self._give_back(process)
        if answer.cancelled():
            return
        if answer.exception() is not None:  # nobody waits for it: no "never retrieved" warning
            context.run(self._tracing.record, QUEUE, queued, time.time_ns())
            return
        status, payload, steps = answer.result()
        context.run(self._trace, queued, steps, _failure(status, payload))

    def abort(self) -> None:
        """End every call waiting for a process or its answer with Aborted."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(Aborted())
        for process in self._processes.values():
            process.abort()

    async def close(self) -> None:
        """End every call still waiting, and close the connections."""
        self._closing = True
        self.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        processes = self._processes.values()
        await asyncio.gather(*(p.close() for p in processes), return_exceptions=True)
        self._processes.clear()

    async def _take(self) -> ProcessConnection:
        process = self._least_loaded()
        if process is not None:
            process.load += 1
            return process
        waiter: asyncio.Future[ProcessConnection] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            # Given a process as it was cancelled: pass it on, or it is lost.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give_back(waiter.result())
            raise

    def _least_loaded(self) -> ProcessConnection | None:
        """The process with the fewest of this worker's images; the first in ``paths`` of equals.

        Fewest first: two images never wait on one process while another
        idles. The first of equals: calls that come one at a time keep going
        to the same process, whose CPU has not gone idle long; alternating,
        each image cost 2-6% more CPU (benchmarks/README.md). The supervisor
        gives each worker the paths from a different one on, so that workers
        with a call each do not pile onto one process.
        """
        best: ProcessConnection | None = None
        for path in self.paths:
            process = self._processes.get(path)
            if process is None or not process.alive or process.load >= self.depth:
                continue
            if best is None or process.load < best.load:
                best = process
                if not process.load:
                    break
        return best

    def _give_back(self, process: ProcessConnection) -> None:
        process.load -= 1
        if process.alive:
            self._hand_to_waiter(process)

    def _hand_to_waiter(self, process: ProcessConnection) -> bool:
        """Give a place on ``process`` to the call that has waited longest; False if none waits."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                process.load += 1
                waiter.set_result(process)
                return True
        return False

    def _serve(self, path: str, process: ProcessConnection) -> None:
        self._processes[path] = process
        self._description = process.description
        for _ in range(self.depth):
            if not self._hand_to_waiter(process):
                break
        self._spawn(self._watch(path, process))

    async def _watch(self, path: str, process: ProcessConnection) -> None:
        await process.answer_all()
        if self._processes.get(path) is process:
            del self._processes[path]
        await process.close()
        if self._closing:
            return
        log.warning("inference process %d exited; waiting for its replacement", process.pid)
        # The pool starts another at the same path; it listens once its model loaded.
        replacement = await self._connect(path)
        if self._closing:
            await replacement.close()
            return
        self._serve(path, replacement)

    def _spawn(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _failure(status: Status, payload: bytes) -> Exception | None:
    """What the call raises for a process's answer, as the thread queue would; None for OK."""
    if status is Status.OK:
        return None
    message, _, detail = payload.decode(errors="replace").partition("\0")
    if status is Status.INVALID_IMAGE:
        return InvalidImage(message)
    if status is Status.DEADLINE_PASSED:
        return DeadlinePassed()
    failure = ModelFailure(message)
    # The model's traceback, from its process: logged with the call, as with threads.
    failure.__cause__ = InferenceProcessError(detail)
    return failure
