"""Micro-batching: concurrent calls share one ``process_batch`` run.

A model that is faster per image in batches (a GPU, a vectorised network)
implements ``Model.process_batch``; the server then queues decoded images for
up to ``max_delay`` seconds or until ``max_size`` are waiting, and runs them
together in the inference pool. Off (size 1) by default: on the CPU models
here it measured slower (benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

from PIL import Image

from emotion.contract import Response

log = logging.getLogger(__name__)

RunBatch = Callable[[Sequence[Image.Image]], list[Response]]


@dataclass
class _Waiting:
    image: Image.Image
    answer: asyncio.Future[Response]


class Batcher:
    """Collects images from concurrent calls and answers each with its own Response."""

    def __init__(
        self,
        run_batch: RunBatch,
        executor: Executor,
        *,
        max_size: int,
        max_delay: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_size < 2:
            raise ValueError("a batch needs room for at least two images")
        self._run_batch = run_batch
        self._executor = executor
        self._on_batch = on_batch
        self.max_size = max_size
        self.max_delay = max_delay
        self._waiting: list[_Waiting] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, image: Image.Image) -> Response:
        """The model's answer for ``image``, run in a batch with whatever else is waiting."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(image, loop.create_future())
        self._waiting.append(waiting)
        if len(self._waiting) >= self.max_size:
            self._dispatch()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_delay, self._dispatch)
        # A caller that gives up cancels only its own answer; the batch runs on.
        return await waiting.answer

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Calls whose client left while waiting need no answer.
        waiting = [w for w in self._waiting if not w.answer.cancelled()]
        self._waiting = []
        for start in range(0, len(waiting), self.max_size):
            task = asyncio.ensure_future(self._run(waiting[start : start + self.max_size]))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Waiting]) -> None:
        loop = asyncio.get_running_loop()
        images = [w.image for w in batch]
        if self._on_batch is not None:
            self._on_batch(len(images))
        try:
            responses = await loop.run_in_executor(self._executor, self._run_batch, images)
        except Exception as exc:
            for waiting in batch:
                if not waiting.answer.done():
                    waiting.answer.set_exception(exc)
            return
        for waiting, response in zip(batch, responses, strict=True):
            if not waiting.answer.done():
                waiting.answer.set_result(response)
