"""The model in the worker's own threads (`--inference-processes 0`), batched or not.

The worker loads the model itself and runs each image as one job of the
inference queue (emotion.inference.threads). With ``max_batch_size`` above 1,
the image is decoded in a thread, then waits in a Batcher (emotion.inference.
batching) to run with other calls' images in one ``process_batch``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor

from emotion.contract import ModelDescription, Options
from emotion.decode import Decoded
from emotion.inference.batching import Batcher
from emotion.inference.pipeline import decode_for, infer, written
from emotion.inference.threads import InferenceQueue
from emotion.model import Model, describe, run_batch
from emotion.observability.metrics import NoMetrics, Recorder
from emotion.observability.tracing import BATCH, DECODE, MODEL, NoTracing, Tracer

log = logging.getLogger(__name__)


class ThreadBackend:
    """``model`` run by ``threads`` threads, at most ``capacity`` images waiting or running."""

    def __init__(
        self,
        model: Model,
        *,
        threads: int,
        capacity: int,
        max_pixels: int,
        max_batch_size: int = 1,
        max_batch_delay: float = 0.0,
        metrics: Recorder | None = None,
        tracing: Tracer | None = None,
    ) -> None:
        self._model = model
        self._max_pixels = max_pixels
        self._tracing = tracing or NoTracing()
        metrics = metrics or NoMetrics()
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="emotion-infer")
        self._queue = InferenceQueue(
            self._executor, capacity=capacity, metrics=metrics, tracing=self._tracing
        )
        self._batcher: Batcher | None = None
        if max_batch_size > 1:
            self._batcher = Batcher(
                functools.partial(run_batch, model),
                self._queue,
                max_size=max_batch_size,
                max_delay=max_batch_delay,
                on_batch=metrics.batch_size.observe,
                tracing=self._tracing,
            )
        # Set by the loading thread itself: its task may be cancelled, it cannot.
        self._loading = False
        self._loaded = False
        self._description: ModelDescription | None = None

    @property
    def capacity(self) -> int:
        return self._queue.capacity

    @property
    def queued(self) -> int:
        return self._queue.queued

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    @property
    def description(self) -> ModelDescription:
        if self._description is None:
            raise RuntimeError("the model has not loaded")
        return self._description

    def _load(self) -> None:
        self._loading = True
        try:
            self._model.load()
            self._description = describe(self._model)
            self._loaded = True
        finally:
            self._loading = False

    async def run(
        self, image: bytes, deadline: float | None, options: Options | None = None
    ) -> bytes:
        if self._batcher is None:
            step = self._decode_and_infer
            if options is not None:
                step = functools.partial(self._decode_and_infer, options=options)
            return await self._queue.run(step, image, deadline=deadline)
        decoded = await self._queue.run(self._decode, image, deadline=deadline)
        with self._tracing.span(BATCH):
            response = await self._batcher.submit(decoded.image, deadline=deadline, options=options)
        return written(self._model, response, decoded, options)

    def _decode(self, data: bytes) -> Decoded:
        # A bad image is the caller's fault, not the server's: not an ERROR span.
        with self._tracing.span(DECODE, errors=False):
            return decode_for(self._model, data, self._max_pixels)

    def _decode_and_infer(self, data: bytes, options: Options | None = None) -> bytes:
        decoded = self._decode(data)
        with self._tracing.span(MODEL):
            response = infer(self._model, decoded, options)
        return written(self._model, response, decoded, options)

    def abort(self) -> None:
        self._queue.abort()

    async def close(self) -> None:
        """Close the model, unless a thread still uses it: then leave it be.

        Python waits for such threads before the process can exit; a server
        process that must stop in time exits with ``os._exit`` instead.
        """
        loading = self._loading
        busy = self._queue.inferring
        self._executor.shutdown(wait=False, cancel_futures=True)
        if loading or busy:
            log.warning(
                "not waiting for %s; model %s not closed",
                "load() to finish" if loading and not busy else f"{busy} model call(s)",
                self._model.name,
            )
            return
        if not self._loaded:
            return
        try:
            self._model.close()
        except Exception:
            log.exception("model %s failed to close", self._model.name)
