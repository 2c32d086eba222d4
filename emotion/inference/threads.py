"""The inference queue: jobs for the threads that decode images and run the model.

Decoding and the model are CPU-bound, so they run in an executor and the
event loop stays free for health checks, cancellations and other calls. The
queue is bounded, a job whose caller leaves is withdrawn before it runs, and
a job whose deadline passed while it waited never reaches the model. Nothing
here knows gRPC: refusals are exceptions that emotion.errors turns into
statuses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from emotion.model import ModelFailure
from emotion.observability.metrics import NoMetrics, Recorder
from emotion.observability.tracing import NoTracing, Tracer

T = TypeVar("T")
U = TypeVar("U")

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds as many images as it may; the caller should back off and retry."""

    def __init__(self, waiting: int) -> None:
        super().__init__(
            f"server is busy: {waiting} images are waiting for the model; retry with backoff"
        )


class DeadlinePassed(Exception):
    """The call's deadline passed before an inference thread could take its job."""

    def __init__(self) -> None:
        super().__init__("the deadline passed while the call waited for the model")


class Aborted(Exception):
    """The server ended the job's call while it waited or ran: it is shutting down."""

    def __init__(self) -> None:
        super().__init__("server shut down before the call finished; retry")


class InferenceQueue:
    """Runs jobs in ``executor``, at most ``capacity`` images at once, waiting or running.

    Deadlines are :func:`time.monotonic` instants.
    """

    def __init__(
        self,
        executor: concurrent.futures.Executor,
        *,
        capacity: int,
        metrics: Recorder | None = None,
        tracing: Tracer | None = None,
    ) -> None:
        self._executor = executor
        self.capacity = capacity
        self._metrics = metrics or NoMetrics()
        self._tracing = tracing or NoTracing()
        self._queued = 0
        self._queued_lock = threading.Lock()
        self._inferring = 0
        self._inferring_lock = threading.Lock()
        # Resolved by abort(); every job's caller waits on it beside the job.
        # Made on first use, inside the loop that serves.
        self._abort: asyncio.Future[None] | None = None

    @property
    def queued(self) -> int:
        """Images submitted and not finished: waiting for a thread, or in one."""
        return self._queued

    @property
    def inferring(self) -> int:
        """Threads inside a job right now, those whose caller left included."""
        return self._inferring

    async def run(
        self, step: Callable[[U], T], argument: U, *, deadline: float | None, weight: int = 1
    ) -> T:
        """``step(argument)`` in an inference thread; ``weight`` is how many images it holds.

        Raises QueueFull at once when the queue has no room, DeadlinePassed if
        the deadline passes before a thread takes the job, and Aborted when
        :meth:`abort` is called first. A caller that is cancelled withdraws
        its job if it has not started; one already running finishes
        unobserved, and a model failure in it is logged.
        """
        job = self._submit(step, argument, deadline, weight)
        work = asyncio.wrap_future(job)
        try:
            await asyncio.wait((work, self._abort_signal()), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            _abandon(job, work)
            raise
        if not work.done():
            _abandon(job, work)
            raise Aborted
        return work.result()

    def abort(self) -> None:
        """End every waiting :meth:`run` with Aborted; threads already working finish unobserved."""
        abort = self._abort_signal()
        if not abort.done():
            abort.set_result(None)

    def _submit(
        self, step: Callable[[U], T], argument: U, deadline: float | None, weight: int
    ) -> concurrent.futures.Future[T]:
        with self._queued_lock:
            if self._queued + weight > self.capacity:
                raise QueueFull(self._queued)
            self._queued += weight
        self._metrics.queue_depth.inc(weight)
        job = self._tracing.submit(self._executor, self._counted, step, argument, deadline)
        # Also called for a job withdrawn before it ran.
        job.add_done_callback(lambda _: self._finished(weight))
        return job

    def _finished(self, weight: int) -> None:
        with self._queued_lock:
            self._queued -= weight
        self._metrics.queue_depth.dec(weight)

    def _counted(self, step: Callable[[U], T], argument: U, deadline: float | None) -> T:
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlinePassed
        with self._inferring_lock:
            self._inferring += 1
        try:
            return step(argument)
        finally:
            with self._inferring_lock:
                self._inferring -= 1

    def _abort_signal(self) -> asyncio.Future[None]:
        if self._abort is None:
            self._abort = asyncio.get_running_loop().create_future()
        return self._abort


def _abandon(job: concurrent.futures.Future[Any], work: asyncio.Future[Any]) -> None:
    """Nobody waits for ``job`` any more: withdraw it, or log how it ends."""
    work.cancel()
    # cancel() fails only for a job already running in its thread.
    if not job.cancel():
        job.add_done_callback(_log_unobserved_failure)


def _log_unobserved_failure(job: concurrent.futures.Future[Any]) -> None:
    if job.cancelled():
        return
    failure = job.exception()
    if isinstance(failure, ModelFailure):
        log.error("%s (its caller had already gone)", failure, exc_info=failure.__cause__)
