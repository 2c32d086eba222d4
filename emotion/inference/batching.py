"""Micro-batching: concurrent calls share one ``process_batch`` run.

A model that is faster per image in batches (a GPU, a vectorised network)
implements ``Model.process_batch``; the server then queues decoded images for
up to ``max_delay`` seconds or until ``max_size`` are waiting, and runs them
together as one job of the inference queue, so the queue's capacity and each
call's deadline hold for batches too. Off (size 1) by default: on the CPU
models here it measured slower (benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image

from emotion.contract import Options, Response
from emotion.inference.threads import DeadlinePassed, InferenceQueue
from emotion.observability.tracing import MODEL, NoTracing, Tracer

#: The model on images and each one's options (None where a request set none).
RunBatch = Callable[[Sequence[Image.Image], Sequence[Options | None]], list[Response]]


@dataclass
class _Waiting:
    image: Image.Image
    deadline: float | None
    answer: asyncio.Future[Response]
    caller: object  # its call's span, linked from the batch run's
    options: Options | None = None
    #: The batch it was dispatched in, and the task running it.
    batch: list[_Waiting] = field(default_factory=list)
    run: asyncio.Task[None] | None = None


class Batcher:
    """Collects images from concurrent calls and answers each with its own Response."""

    def __init__(
        self,
        run_batch: RunBatch,
        inference: InferenceQueue,
        *,
        max_size: int,
        max_delay: float,
        on_batch: Callable[[int], None] | None = None,
        tracing: Tracer | None = None,
    ) -> None:
        if max_size < 2:
            raise ValueError("a batch needs room for at least two images")
        self._run_batch = run_batch
        self._inference = inference
        self._on_batch = on_batch
        self._tracing = tracing or NoTracing()
        self.max_size = max_size
        self.max_delay = max_delay
        self._waiting: list[_Waiting] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def submit(
        self,
        image: Image.Image,
        *,
        deadline: float | None = None,
        options: Options | None = None,
    ) -> Response:
        """The model's answer for ``image``, run in a batch with whatever else is waiting.

        ``deadline`` is a :func:`time.monotonic` instant: an image whose
        deadline passes before its batch starts is left out of it. ``options``
        go to the model with the image.
        """
        loop = asyncio.get_running_loop()
        caller = self._tracing.current()
        waiting = _Waiting(image, deadline, loop.create_future(), caller, options)
        self._waiting.append(waiting)
        if len(self._waiting) >= self.max_size:
            self._dispatch()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_delay, self._dispatch)
        try:
            return await waiting.answer
        except asyncio.CancelledError:
            # The batch runs on for the others; once all have left, it is withdrawn.
            if waiting.run is not None and all(w.answer.done() for w in waiting.batch):
                waiting.run.cancel()
            raise

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Calls whose client left while waiting need no answer.
        waiting = [w for w in self._waiting if not w.answer.cancelled()]
        self._waiting = []
        for start in range(0, len(waiting), self.max_size):
            batch = waiting[start : start + self.max_size]
            task = asyncio.ensure_future(self._run(batch))
            for member in batch:
                member.batch, member.run = batch, task
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Waiting]) -> None:
        deadlines = [w.deadline for w in batch]
        # The job waits as long as its latest image may; earlier ones are dropped inside it.
        latest = None if None in deadlines else max(d for d in deadlines if d is not None)
        try:
            with self._tracing.batch_run(len(batch), [w.caller for w in batch]):
                ran, responses = await self._inference.run(
                    self._live_only, batch, deadline=latest, weight=len(batch)
                )
        except Exception as exc:
            for waiting in batch:
                _settle(waiting, exc)
            return
        for waiting, response in zip(ran, responses, strict=True):
            _settle(waiting, response)
        for waiting in batch:
            _settle(waiting, DeadlinePassed())

    def _live_only(self, batch: list[_Waiting]) -> tuple[list[_Waiting], list[Response]]:
        """Run the images still wanted: their caller waits and their deadline has not passed."""
        now = time.monotonic()
        live = [
            w for w in batch if not w.answer.done() and (w.deadline is None or now < w.deadline)
        ]
        if not live:
            return [], []
        self._on_batch_size(len(live))
        with self._tracing.span(MODEL):
            return live, self._run_batch([w.image for w in live], [w.options for w in live])

    def _on_batch_size(self, size: int) -> None:
        if self._on_batch is not None:
            self._on_batch(size)


def _settle(waiting: _Waiting, outcome: Response | Exception) -> None:
    if waiting.answer.done():
        return
    if isinstance(outcome, Exception):
        waiting.answer.set_exception(outcome)
    else:
        waiting.answer.set_result(outcome)
